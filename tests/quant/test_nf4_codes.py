"""NF4 codes, quantisation and dequantisation against the reference (bitsandbytes' CPU backend), error bounds,
padding and the byte cost (QLoRA, https://arxiv.org/abs/2305.14314, §3)."""
from __future__ import annotations

import pytest
import torch

from minift.quant.nf4 import (
    absmax_fp32,
    dequantize_nf4,
    dynamic_code,
    nf4_bytes,
    nf4_code,
    quantize_nf4,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# even last dimension: bitsandbytes' CPU dequantisation falls back to torch.compile (slow) on an odd one;
# (10, 30) and (6, 4098) are not whole blocks of 64 (the last block is padded)
SHAPES = [(128, 64), (10, 30), (6, 4098), (96, 576)]


@pytest.fixture(scope="module")
def bnb():
    return pytest.importorskip("bitsandbytes.functional")


def test_code_values_follow_the_paper():
    code = nf4_code()
    assert code.shape == (16,) and code.dtype == torch.float32
    assert torch.all(code[1:] > code[:-1])  # sorted, distinct
    assert (code[0].item(), code[7].item(), code[15].item()) == (-1.0, 0.0, 1.0)  # exact zero and extremes
    assert int((code > 0).sum()) == 8 and int((code < 0).sum()) == 7  # the asymmetric type of §3


def test_code_values_equal_the_reference_table(bnb):
    assert torch.equal(nf4_code(), bnb.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(dynamic_code(), bnb.create_dynamic_map(signed=True))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_equals_the_reference(bnb, shape, dtype):
    w = torch.randn(shape).to(dtype)
    ours = quantize_nf4(w, block_size=64)
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    # bitsandbytes stores ceil(numel / 2) bytes; ours are padded to whole blocks with code 7 (the zero) pairs
    n = packed.numel()
    assert torch.equal(ours.codes[:n], packed.view(-1))
    assert torch.all(ours.codes[n:] == 0x77)
    assert torch.equal(ours.absmax, state.absmax)
    for out_dtype in DTYPES:
        state.dtype = out_dtype
        assert torch.equal(dequantize_nf4(ours, out_dtype), bnb.dequantize_4bit(packed, state).view(shape))


@pytest.mark.parametrize("dtype", DTYPES)
def test_double_quantisation_matches_the_reference(bnb, dtype):
    w = torch.randn(96, 4096).to(dtype)  # 6144 blocks: 24 absmax blocks of 256
    ours = quantize_nf4(w, block_size=64, double_quant=True, double_block_size=256)
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    assert torch.equal(ours.codes, packed.view(-1))
    assert torch.equal(ours.absmax_offset, state.offset)  # the mean of the fp32 absmax
    assert torch.equal(ours.absmax_scale, state.state2.absmax)  # one fp32 scale per 256 absmax
    # The 8-bit indices: we round each centred absmax to the nearest dynamic-type value (as bitsandbytes'
    # pure-PyTorch backend does); its C++ CPU kernel takes the neighbouring value for a few of them (< 1%).
    ours_q, ref_q = ours.absmax.long(), state.absmax.long()
    differ = ours_q != ref_q
    assert differ.float().mean() < 0.01
    assert torch.all((ours_q - ref_q)[differ].abs() == 1)
    code = dynamic_code()
    scale = ours.absmax_scale.repeat_interleave(256)[: ours.num_blocks]
    scaled = (quantize_nf4(w).absmax - ours.absmax_offset) * (1 / scale)
    assert torch.all((scaled - code[ours_q]).abs() <= (scaled - code[ref_q]).abs())
    # decoding is the same: the reference dequantises our record to our values, bit for bit
    state.absmax, state.dtype = ours.absmax, dtype
    assert torch.equal(dequantize_nf4(ours, dtype), bnb.dequantize_4bit(packed, state))

@pytest.mark.parametrize("double_quant", [False, True])
def test_dequantised_error_is_bounded_by_half_the_widest_code_gap(double_quant):
    w = torch.randn(256, 320) * 0.02
    record = quantize_nf4(w, double_quant=double_quant)
    exact = quantize_nf4(w).absmax.repeat_interleave(64).view(w.shape)  # fp32 absmax per weight
    stored = absmax_fp32(record).repeat_interleave(64).view(w.shape)
    code = nf4_code()
    half_gap = ((code[1:] - code[:-1]).max() / 2).item()  # 0.152: between -1 and -0.696
    error = (dequantize_nf4(record) - w).abs()
    # |w - c * a'| <= |w - c * a| + |c| |a - a'| <= half_gap * a + |a - a'|
    assert torch.all(error <= half_gap * exact + (stored - exact).abs() + 1e-7)
    relative = (error.norm() / w.norm()).item()
    assert relative < 0.1  # ~0.092 for Gaussian weights: NF4 is information-theoretically optimal for them (§3)


def test_padding_keeps_the_shape_and_the_last_block():
    w = torch.randn(5, 3)  # 15 weights: one block, 49 zeros of padding
    record = quantize_nf4(w)
    assert record.shape == (5, 3) and record.codes.shape == (32,) and record.absmax.shape == (1,)
    assert record.absmax.item() == w.abs().max().item()
    assert dequantize_nf4(record).shape == (5, 3)
    assert torch.allclose(dequantize_nf4(record), w, atol=0.16 * w.abs().max().item())


@pytest.mark.parametrize("numel", [64, 1000, 64 * 256, 64 * 256 + 1, 576 * 1536])
@pytest.mark.parametrize("double_quant", [False, True])
def test_stored_bytes_are_the_documented_cost(numel, double_quant):
    record = quantize_nf4(torch.empty(numel, device="meta"), double_quant=double_quant)
    assert record.nbytes == nf4_bytes(numel, 64, double_quant, 256)
    blocks = -(-numel // 64)
    expected = blocks * 32 + (blocks + 4 * -(-blocks // 256) + 4 if double_quant else 4 * blocks)
    assert record.nbytes == expected


def test_bytes_per_weight():
    n = 4096 * 4096
    assert nf4_bytes(n) / n == 0.5 + 4 / 64  # 4.5 bits
    assert nf4_bytes(n, double_quant=True) / n == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256), rel=1e-6)  # 4.127 bits


def test_meta_weights_give_meta_records():
    record = quantize_nf4(torch.empty(1024, 4096, device="meta", dtype=torch.bfloat16), double_quant=True)
    assert all(t.is_meta for t in record.tensors())
    assert dequantize_nf4(record, torch.bfloat16).shape == (1024, 4096)


def test_zero_block_and_bad_arguments():
    w = torch.zeros(2, 64)
    w[1] = torch.linspace(-1, 1, 64)
    record = quantize_nf4(w, double_quant=True)
    assert torch.all(dequantize_nf4(record)[0].abs() < 1e-6)
    assert torch.allclose(dequantize_nf4(record)[1], w[1], atol=0.16)
    with pytest.raises(TypeError):
        quantize_nf4(torch.ones(64, dtype=torch.int32))
    with pytest.raises(ValueError):
        quantize_nf4(torch.ones(64), block_size=63)
