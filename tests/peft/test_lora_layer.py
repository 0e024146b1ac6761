"""LoRALinear on a plain nn.Linear: keys, initialisation, forward math, merge/unmerge, gradients, peft parity."""
import math

import pytest
import torch
from torch import nn

from minift.peft.config import LoRAConfig
from minift.peft.lora import LoRALinear


def _lora(in_f=32, out_f=24, r=4, alpha=8.0, dropout=0.0, bias=True):
    base = nn.Linear(in_f, out_f, bias=bias)
    return base, LoRALinear.from_linear(base, r=r, alpha=alpha, dropout=dropout)


def test_keys_do_not_move_and_base_parameters_are_shared():
    base, lora = _lora()
    assert lora.weight is base.weight and lora.bias is base.bias
    assert set(lora.state_dict()) == {"weight", "bias", "lora_A", "lora_B"}
    assert lora.lora_A.shape == (4, 32) and lora.lora_B.shape == (24, 4)
    assert lora.scaling == 8.0 / 4
    assert isinstance(lora, nn.Linear)
    assert set(lora.adapter_params()) == {"lora_A", "lora_B"}


def test_init_b_zero_output_equals_base_and_a_is_kaiming_uniform():
    base, lora = _lora(in_f=256, out_f=16, r=64)
    x = torch.randn(3, 5, 256)
    assert torch.equal(lora(x), base(x))
    assert torch.count_nonzero(lora.lora_B) == 0
    # kaiming_uniform_(a=sqrt(5)) on (r, in): U(-1/sqrt(in), 1/sqrt(in)), std = bound / sqrt(3)
    bound = 1 / math.sqrt(256)
    assert lora.lora_A.abs().max() <= bound
    torch.testing.assert_close(lora.lora_A.std().item(), bound / math.sqrt(3), rtol=0.03, atol=0)


def test_forward_matches_the_formula_in_float64():
    base, lora = _lora()
    nn.init.normal_(lora.lora_B)
    x = torch.randn(2, 7, 32)
    d = torch.float64
    expected = (x.to(d) @ base.weight.to(d).T + base.bias.to(d)
                + lora.scaling * (x.to(d) @ lora.lora_A.to(d).T @ lora.lora_B.to(d).T))
    torch.testing.assert_close(lora(x).to(d), expected, rtol=1e-5, atol=1e-5)


def test_merge_unmerge_idempotent_and_equal_outputs():
    base, lora = _lora(bias=False)
    nn.init.normal_(lora.lora_B)
    w0 = lora.weight.detach().clone()
    x = torch.randn(4, 32)
    y = lora(x)
    lora.merge()
    assert lora.merged
    merged_w = lora.weight.detach().clone()
    lora.merge()  # idempotent: no second add
    assert torch.equal(lora.weight, merged_w)
    assert not torch.allclose(merged_w, w0)
    torch.testing.assert_close(lora(x), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base(x), y, rtol=1e-5, atol=1e-5)  # the shared weight holds the update
    lora.unmerge()
    lora.unmerge()
    assert not lora.merged
    torch.testing.assert_close(lora.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(lora(x), y, rtol=1e-5, atol=1e-5)


def test_merge_in_bf16_computes_the_delta_in_fp32():
    base = nn.Linear(32, 16).to(torch.bfloat16)
    lora = LoRALinear.from_linear(base, r=4, alpha=8)
    assert lora.lora_A.dtype == torch.bfloat16
    nn.init.normal_(lora.lora_B)
    w0 = lora.weight.detach().clone()
    delta = (lora.lora_B.float() @ lora.lora_A.float()) * lora.scaling
    lora.merge()
    assert lora.weight.dtype == torch.bfloat16
    assert torch.equal(lora.weight, (w0.float() + delta).to(torch.bfloat16))


def test_gradients_reach_only_lora_when_base_frozen():
    _, lora = _lora()
    lora.weight.requires_grad_(False)
    lora.bias.requires_grad_(False)
    nn.init.normal_(lora.lora_B)
    lora(torch.randn(3, 32)).square().sum().backward()
    assert lora.weight.grad is None and lora.bias.grad is None
    assert lora.lora_A.grad is not None and lora.lora_A.grad.abs().sum() > 0
    assert lora.lora_B.grad is not None and lora.lora_B.grad.abs().sum() > 0


def test_dropout_only_on_the_lora_path():
    base, lora = _lora(dropout=0.5)
    x = torch.randn(64, 32)
    lora.train()
    assert torch.equal(lora(x), base(x))  # B = 0: dropout on the LoRA path changes nothing
    nn.init.normal_(lora.lora_B)
    lora.eval()
    y_eval = lora(x)
    lora.train()
    assert not torch.allclose(lora(x), y_eval)
    lora.eval()
    assert torch.equal(lora(x), y_eval)


def test_meta_device_wrap_allocates_nothing():
    base = nn.Linear(768, 768, device="meta")
    lora = LoRALinear.from_linear(base, r=8, alpha=16)
    assert lora.lora_A.is_meta and lora.lora_B.is_meta
    assert lora.lora_A.numel() + lora.lora_B.numel() == 2 * 768 * 8


def test_same_weights_same_output_as_peft_lora_linear():
    peft = pytest.importorskip("peft")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(32, 24)

    net = Net()
    ours = LoRALinear.from_linear(nn.Linear(32, 24), r=4, alpha=12)
    ours.load_state_dict({**net.proj.state_dict(), "lora_A": torch.randn(4, 32), "lora_B": torch.randn(24, 4)})
    ref = peft.get_peft_model(net, peft.LoraConfig(r=4, lora_alpha=12, target_modules=["proj"]))
    layer = ref.base_model.model.proj
    with torch.no_grad():
        layer.base_layer.weight.copy_(ours.weight)
        layer.base_layer.bias.copy_(ours.bias)
        layer.lora_A["default"].weight.copy_(ours.lora_A)
        layer.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(5, 32)
    torch.testing.assert_close(ours(x), layer(x))
    ref.merge_adapter()
    ours.merge()
    torch.testing.assert_close(ours.weight, layer.base_layer.weight)


@pytest.mark.parametrize("kwargs, message", [
    ({"r": 0}, "positive integer"),
    ({"r": 2.5}, "positive integer"),
    ({"alpha": -1}, "alpha"),
    ({"dropout": 1.0}, "dropout"),
    ({"targets": []}, "targets"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**kwargs)


def test_config_accepts_comma_separated_targets():
    assert LoRAConfig(targets="query, value").targets == ["query", "value"]


def test_from_linear_rejects_non_linear():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear.from_linear(nn.Conv1d(3, 3, 1), r=2, alpha=2)
