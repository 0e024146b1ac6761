"""NF4Linear: forward equals F.linear with the dequantised weight, gradients reach the input and not the weight,
the weight is not kept for backward, buffers move and serialise, the byte cost, the meta device."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minift.quant import NF4Linear, nf4_bytes
from minift.quant.nf4 import dequantize_nf4, quantize_nf4


def _layer(in_features=96, out_features=80, bias=True, double_quant=True, dtype=torch.float32):
    linear = nn.Linear(in_features, out_features, bias=bias).to(dtype)
    return linear, NF4Linear.from_linear(linear, double_quant=double_quant)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("double_quant", [False, True])
def test_forward_equals_f_linear_with_the_dequantised_weight(dtype, bias, double_quant):
    linear, layer = _layer(bias=bias, double_quant=double_quant, dtype=dtype)
    record = quantize_nf4(linear.weight, double_quant=double_quant)
    x = torch.randn(2, 7, 96, dtype=dtype)
    expected = F.linear(x, dequantize_nf4(record, dtype), linear.bias)
    assert torch.equal(layer(x), expected)
    assert torch.equal(layer.dequantized_weight(dtype), dequantize_nf4(record, dtype))
    assert [p.requires_grad for p in layer.parameters()] == ([False] if bias else [])  # frozen bias only
    reference = linear(x).detach().float()
    assert ((layer(x).float() - reference).norm() / reference.norm()).item() < 0.15  # NF4's ~10% weight error


def test_backward_gives_the_input_gradient_and_saves_no_weight():
    _, layer = _layer()
    x = torch.randn(3, 5, 96, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    assert (80, 96) not in saved and (96, 80) not in saved  # no dequantised weight kept for backward
    grad = torch.randn_like(y)
    y.backward(grad)
    torch.testing.assert_close(x.grad, grad @ layer.dequantized_weight(torch.float32))
    assert layer.bias.grad is None


def test_a_trainable_bias_gets_its_gradient():
    _, layer = _layer()
    layer.bias.requires_grad_(True)  # BitFit on a 4-bit base
    x = torch.randn(4, 96)
    layer(x).pow(2).sum().backward()
    bias = layer.bias.detach().clone().requires_grad_(True)
    F.linear(x, layer.dequantized_weight(torch.float32), bias).pow(2).sum().backward()
    torch.testing.assert_close(layer.bias.grad, bias.grad)


def test_autocast_computes_in_bf16_and_returns_an_fp32_input_gradient():
    _, layer = _layer()
    x = torch.randn(4, 96, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32
    expected = torch.ones(4, 80, dtype=torch.bfloat16) @ layer.dequantized_weight(torch.bfloat16)
    torch.testing.assert_close(x.grad, expected.float())


def test_buffers_serialise_and_a_cast_keeps_the_scales_in_fp32():
    _, layer = _layer(double_quant=True)
    state = layer.state_dict()
    assert set(state) == {"bias", "weight_codes", "weight_absmax", "weight_absmax_scale", "weight_absmax_offset"}
    fresh = NF4Linear(96, 80, bias=True, double_quant=True)
    fresh.load_state_dict(state)
    x = torch.randn(2, 96)
    assert torch.equal(fresh(x), layer(x))
    layer.to(torch.bfloat16)
    assert layer.compute_dtype == torch.bfloat16 and layer.bias.dtype == torch.bfloat16
    assert layer.weight_absmax.dtype == torch.uint8 and layer.weight_absmax_scale.dtype == torch.float32
    assert torch.equal(layer.dequantized_weight(torch.float32), fresh.dequantized_weight(torch.float32))


@pytest.mark.parametrize("double_quant", [False, True])
def test_buffers_take_the_documented_bytes(double_quant):
    layer = NF4Linear.from_linear(nn.Linear(4096, 1024, bias=False, device="meta"), double_quant=double_quant)
    stored = sum(b.numel() * b.element_size() for b in layer.buffers())
    n = 4096 * 1024
    assert stored == layer.nbytes == nf4_bytes(n, 64, double_quant)
    per_weight = 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)
    assert stored == pytest.approx(n * per_weight, abs=4)


def test_meta_device_layer_keeps_features_and_runs():
    layer = NF4Linear.from_linear(nn.Linear(64, 32, device="meta", dtype=torch.bfloat16))
    assert (layer.in_features, layer.out_features) == (64, 32)
    assert all(b.is_meta for b in layer.buffers())
    assert layer(torch.empty(2, 3, 64, device="meta", dtype=torch.bfloat16)).shape == (2, 3, 32)


def test_to_linear_dequantises():
    linear, layer = _layer(dtype=torch.bfloat16)
    plain = layer.to_linear(torch.float32)
    assert type(plain) is nn.Linear and plain.weight.dtype == torch.float32
    assert torch.equal(plain.weight, layer.dequantized_weight(torch.float32))
    assert torch.equal(plain.bias, linear.bias.float())
