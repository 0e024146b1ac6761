"""Bottleneck adapters on a plain nn.Linear: identity at init, forward math, parameters, config validation."""
import pytest
import torch
from torch import nn

from minift.peft.adapter import AdapterLinear, Bottleneck, adapter_param_count
from minift.peft.config import AdapterConfig


def test_identity_at_init_and_keys_do_not_move():
    base = nn.Linear(32, 24)
    wrapped = AdapterLinear.from_linear(base, size=8, activation="gelu")
    assert wrapped.weight is base.weight and wrapped.bias is base.bias
    x = torch.randn(2, 5, 32)
    assert torch.equal(wrapped(x), base(x))
    assert set(wrapped.state_dict()) == {"weight", "bias", "adapter.down.weight", "adapter.down.bias",
                                         "adapter.up.weight", "adapter.up.bias"}
    assert set(wrapped.adapter_params()) == {"adapter.down.weight", "adapter.down.bias",
                                             "adapter.up.weight", "adapter.up.bias"}


@pytest.mark.parametrize("activation, fn", [("relu", torch.relu), ("gelu", nn.functional.gelu),
                                            ("tanh", torch.tanh), ("silu", nn.functional.silu)])
def test_forward_is_h_plus_up_act_down_h(activation, fn):
    base = nn.Linear(16, 12)
    wrapped = AdapterLinear.from_linear(base, size=4, activation=activation)
    nn.init.normal_(wrapped.adapter.up.weight)
    nn.init.normal_(wrapped.adapter.up.bias)
    x = torch.randn(3, 16)
    h = x @ base.weight.T + base.bias
    a = wrapped.adapter
    expected = h + fn(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
    torch.testing.assert_close(wrapped(x), expected)


def test_parameter_count_formula():
    b = Bottleneck(768, 64)
    assert sum(p.numel() for p in b.parameters()) == 2 * 768 * 64 + 64 + 768
    assert adapter_param_count(768, 64, num_layers=12, placement="houlsby") == 24 * (2 * 768 * 64 + 64 + 768)
    assert adapter_param_count(768, 8, num_layers=12, placement="pfeiffer") == 12 * (2 * 768 * 8 + 8 + 768)


def test_gradients_reach_the_adapter_when_base_frozen():
    base = nn.Linear(16, 12)
    base.requires_grad_(False)
    wrapped = AdapterLinear.from_linear(base, size=4)
    wrapped(torch.randn(3, 16)).square().sum().backward()
    assert base.weight.grad is None
    assert wrapped.adapter.up.weight.grad.abs().sum() > 0  # up gets gradient first; down once up is non-zero


def test_reduction_factor_gives_the_size():
    assert AdapterConfig(reduction_factor=16).bottleneck_size(768) == 48
    assert AdapterConfig(size=8).bottleneck_size(768) == 8
    assert AdapterConfig().bottleneck_size(768) == 64  # minift.train's default adapter size


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 8, "reduction_factor": 16}, "not both"),
    ({"size": 0}, "positive integer"),
    ({"reduction_factor": -2}, "positive"),
    ({"size": 8, "placement": "middle"}, "placement"),
    ({"size": 8, "activation": "swish2"}, "activation"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)


def test_too_large_reduction_factor_is_an_error():
    with pytest.raises(ValueError, match="no bottleneck"):
        AdapterConfig(reduction_factor=64).bottleneck_size(32)
