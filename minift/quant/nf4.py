"""4-bit NormalFloat (NF4) block-wise quantisation, with optional double quantisation of the block scales.

Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs", https://arxiv.org/abs/2305.14314, Section 3.

- **4-bit NormalFloat** (§3, Eq. 4): 16 code values placed at quantiles of N(0, 1), normalised to [-1, 1], with
  an exact zero. The paper builds an asymmetric type: 2^(k-1) = 8 quantiles for the positive half and
  2^(k-1) - 1 = 7 for the negative half, plus 0. The outermost quantile is taken at ``delta``, the mean of
  1/32 and 1/30 away from 1 (the naive 0 / 1 quantiles are infinite); bitsandbytes rounds it to 0.9677083, and
  we use that exact constant so our 16 values equal its table bit for bit (tests/quant/test_nf4_codes.py).
- **Block-wise absmax** (§2 "Block-wise k-bit Quantization"): the flattened weight is cut into blocks of 64;
  each block is divided by its absolute maximum (kept in fp32) and every value is rounded to the nearest code.
  Two 4-bit codes are packed per byte, the first value of each pair in the high nibble (bitsandbytes' layout).
- **Double quantisation** (§3 "Double Quantization"): the fp32 absmax values are themselves quantised to 8 bits in
  blocks of 256, after subtracting their mean (they are all positive, so centring them uses the signed 8-bit range),
  with one fp32 scale per block of 256 and the fp32 mean kept once. The 8-bit type is bitsandbytes' signed dynamic
  tree type (Dettmers, "8-Bit Approximations for Parallelism in Deep Learning", https://arxiv.org/abs/1511.04561),
  which is what the paper's "8-bit Floats" are in its reference code.

Byte cost per weight (the numbers the memory estimator uses; ``nf4_bytes`` gives the exact count):

- codes: 0.5 byte; absmax: 4 / 64 bytes → 0.5625 byte = 4.5 bits per weight;
- with double quantisation: 0.5 + 1 / 64 + 4 / (64 * 256) bytes → 0.5159 byte = 4.127 bits per weight (§3 quotes
  the same 0.373-bit saving), plus 4 bytes for the mean.

A weight whose element count is not a multiple of the block size is padded with zeros to whole blocks (the zeros
take code 7, the exact 0, and leave the last block's absmax unchanged); the record remembers the original shape.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# bitsandbytes' rounding of 1 - (1/32 + 1/30) / 2 = 0.96770833 (the paper's outermost quantile, §3)
NF4_OFFSET = 0.9677083
BLOCK_SIZE = 64  # weights per absmax (§3: "blocksize of 64")
DOUBLE_BLOCK_SIZE = 256  # absmax values per 8-bit scale (§3: "blocksize of 256")
# blocks handled per step when (de)quantising, so the fp32 / index temporaries stay at ~1M weights whatever the layer
_CHUNK_BLOCKS = 1 << 14


@functools.cache
def _nf4_values() -> tuple[float, ...]:
    # fp32 probabilities, fp64 inverse normal CDF, fp32 normalisation: the arithmetic that gives bitsandbytes' table
    positive = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9)[:-1].double())  # 8 values > 0
    negative = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8)[:-1].double())  # 7 values < 0
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values.float()
    return tuple((values / values.max()).tolist())


def nf4_code(device: torch.device | str | None = None) -> torch.Tensor:
    """The 16 NF4 code values, sorted, in fp32: ``code[0] = -1``, ``code[7] = 0``, ``code[15] = 1`` (§3, Eq. 4)."""
    return torch.tensor(_nf4_values(), dtype=torch.float32, device=device)


@functools.cache
def _dynamic_values() -> tuple[float, ...]:
    # Signed dynamic tree type with 7 exponent steps: after the sign, a value with e leading zero bits (e = 0..6)
    # has magnitude 10^-e times one of 2^(6-e) fractions, the midpoints of an even split of [0.1, 1] (more fraction
    # bits for larger magnitudes). That is 127 magnitudes per sign, plus 0 and 1: 256 values.
    values = [0.0, 1.0]
    for e in range(7):
        edges = torch.linspace(0.1, 1.0, 2 ** (6 - e) + 1)  # fp32 arithmetic throughout, as the reference
        magnitudes = ((edges[:-1] + edges[1:]) / 2 * 10.0 ** -e).tolist()
        values += magnitudes + [-m for m in magnitudes]
    return tuple(sorted(torch.tensor(values, dtype=torch.float32).tolist()))


def dynamic_code(device: torch.device | str | None = None) -> torch.Tensor:
    """The 256 values of the signed 8-bit dynamic type used for double quantisation, sorted, in fp32."""
    return torch.tensor(_dynamic_values(), dtype=torch.float32, device=device)


@functools.cache
def _byte_table(device: torch.device) -> torch.Tensor:
    # (256,) int64: byte -> its two fp32 code values (high nibble first) in one 8-byte word, so dequantising is a
    # 1-D gather of one word per byte (several times faster on CPU than gathering rows of a (256, 2) table)
    code = nf4_code(device)
    byte = torch.arange(256, device=device)
    return torch.stack([code[byte >> 4], code[byte & 15]], dim=1).view(torch.int64).view(256)


@dataclass
class NF4Weight:
    """A weight stored as NF4 codes and block scales (what ``quantize_nf4`` returns).

    Fields:
        codes: uint8 ``(num_blocks * block_size // 2,)``; two 4-bit code indices per byte, first in the high nibble.
        absmax: ``(num_blocks,)``; fp32 block maxima, or (double quantisation) their uint8 dynamic-type indices.
        shape: the original weight's shape (the padding is dropped on dequantisation).
        block_size: weights per block (even).
        absmax_scale: fp32 ``(ceil(num_blocks / double_block_size),)`` scale per block of absmax, or None.
        absmax_offset: fp32 ``()`` mean subtracted from the absmax before quantising them, or None.
        double_block_size: absmax values per ``absmax_scale`` entry.
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    block_size: int = BLOCK_SIZE
    absmax_scale: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None
    double_block_size: int = DOUBLE_BLOCK_SIZE

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def num_blocks(self) -> int:
        return self.absmax.numel()

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def tensors(self) -> list[torch.Tensor]:
        """The stored tensors (codes, absmax and, with double quantisation, scale and mean)."""
        return [t for t in (self.codes, self.absmax, self.absmax_scale, self.absmax_offset) if t is not None]

    @property
    def nbytes(self) -> int:
        """Bytes actually stored: equals ``nf4_bytes(numel, block_size, double_quant, double_block_size)``."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``dequantize_nf4(self, dtype)``."""
        return dequantize_nf4(self, dtype)


def nf4_bytes(numel: int, block_size: int = BLOCK_SIZE, double_quant: bool = False,
              double_block_size: int = DOUBLE_BLOCK_SIZE) -> int:
    """Bytes that an NF4 weight of ``numel`` elements stores (codes, absmax, and the double-quantisation scales).

    ``numel / 2 + 4 * numel / 64`` without double quantisation; ``numel / 2 + numel / 64 + 4 * numel / (64 * 256)
    + 4`` with it (rounded up to whole blocks).
    """
    num_blocks = -(-numel // block_size)
    codes = num_blocks * block_size // 2
    if not double_quant:
        return codes + 4 * num_blocks
    return codes + num_blocks + 4 * -(-num_blocks // double_block_size) + 4


def dequantize_bytes(numel: int, itemsize: int, block_size: int = BLOCK_SIZE, double_quant: bool = False) -> int:
    """Peak bytes one ``dequantize_nf4`` call allocates for a weight of ``numel`` elements in a dtype of
    ``itemsize`` bytes: the result (whole blocks), the fp32 block maxima rebuilt by double quantisation, and one
    chunk's int64 indices and gathered code words (8 bytes per weight of a chunk of ``_CHUNK_BLOCKS`` blocks)."""
    num_blocks = -(-numel // block_size)
    chunk = min(num_blocks, _CHUNK_BLOCKS) * block_size
    return num_blocks * block_size * itemsize + (4 * num_blocks if double_quant else 0) + 8 * chunk


def _check_block_size(block_size: int, name: str = "block_size") -> None:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2 or block_size % 2:
        raise ValueError(f"{name} must be a positive even integer, got {block_size!r}")


def _blockwise(values: torch.Tensor, block_size: int, code: torch.Tensor, start: int, stop: int):
    """Blocks ``start:stop`` of the flat ``values`` (zero-padded past the end) → (code indices uint8, fp32 absmax).

    Rounds to the nearest code value; a value exactly between two codes takes the lower one (bitsandbytes).
    """
    x = values[start * block_size: stop * block_size].float()
    missing = (stop - start) * block_size - x.numel()
    if missing:
        x = F.pad(x, (0, missing))
    x = x.view(stop - start, block_size)  # (nb, bs)
    absmax = x.abs().amax(dim=1)  # (nb,)
    scaled = (x * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1)).clamp_(-1.0, 1.0)  # (nb, bs) in [-1, 1]
    midpoints = (code[:-1] + code[1:]) / 2
    return torch.bucketize(scaled, midpoints, out_int32=True).to(torch.uint8), absmax


def quantize_nf4(weight: torch.Tensor, block_size: int = BLOCK_SIZE, double_quant: bool = False,
                 double_block_size: int = DOUBLE_BLOCK_SIZE) -> NF4Weight:
    """Quantise ``weight`` (any shape, fp32 / bf16 / fp16, any device) to NF4 (§3).

    Works through the weight a chunk of blocks at a time, so the temporaries stay small beside the 4-bit result.

    Args:
        weight: the tensor to quantise; it is read, not modified.
        block_size: weights per absmax block (64 in the paper).
        double_quant: also quantise the absmax values to 8 bits (§3 "Double Quantization").
        double_block_size: absmax values per 8-bit block (256 in the paper).

    Returns:
        ``NF4Weight`` on ``weight``'s device.
    """
    _check_block_size(block_size)
    _check_block_size(double_block_size, "double_block_size")
    if not weight.is_floating_point():
        raise TypeError(f"quantize_nf4 expects a floating-point tensor, got {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError("cannot quantise an empty tensor")
    flat = weight.detach().reshape(-1)
    num_blocks = -(-flat.numel() // block_size)
    device = weight.device
    codes = torch.empty(num_blocks * block_size // 2, dtype=torch.uint8, device=device)
    absmax = torch.empty(num_blocks, dtype=torch.float32, device=device)
    if device.type != "meta":
        code = nf4_code(device)
        for start in range(0, num_blocks, _CHUNK_BLOCKS):
            stop = min(start + _CHUNK_BLOCKS, num_blocks)
            q, absmax[start:stop] = _blockwise(flat, block_size, code, start, stop)
            q = q.view(-1)
            codes[start * block_size // 2: stop * block_size // 2] = (q[0::2] << 4) | q[1::2]
    record = NF4Weight(codes, absmax, weight.shape, block_size, double_block_size=double_block_size)
    if double_quant:
        record.absmax, record.absmax_scale, record.absmax_offset = _quantize_absmax(absmax, double_block_size)
    return record


def _quantize_absmax(absmax: torch.Tensor, block_size: int):
    """fp32 absmax (nb,) → (uint8 (nb,), fp32 scale per block of ``block_size``, fp32 mean ()) (§3)."""
    num = -(-absmax.numel() // block_size)
    if absmax.is_meta:
        return absmax.new_empty(absmax.shape, dtype=torch.uint8), absmax.new_empty(num), absmax.new_empty(())
    offset = absmax.mean()
    q, scale = _blockwise(absmax - offset, block_size, dynamic_code(absmax.device), 0, num)
    q = q.view(-1)
    # a copy when the last block is padded: a view would keep the padded storage (up to block_size - 1 more bytes)
    return (q[: absmax.numel()].clone() if q.numel() != absmax.numel() else q), scale, offset


def absmax_fp32(record: NF4Weight) -> torch.Tensor:
    """The fp32 block maxima (nb,) of ``record``: stored, or rebuilt from the 8-bit double quantisation."""
    if not record.double_quant:
        return record.absmax
    scale = record.absmax_scale.repeat_interleave(record.double_block_size)[: record.num_blocks]  # (nb,)
    return dynamic_code(record.device)[record.absmax.long()] * scale + record.absmax_offset


def dequantize_nf4(record: NF4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight ``record`` stands for, in ``dtype``, with its original shape.

    Each value is ``code[index] * absmax`` computed in fp32 and then rounded to ``dtype`` (bitsandbytes does the
    same, so bf16 results agree bit for bit). Works a chunk of blocks at a time: besides the result, only ~1M
    fp32 temporaries are alive.
    """
    if record.codes.is_meta:
        return torch.empty(record.shape, dtype=dtype, device="meta")
    bs = record.block_size
    absmax = absmax_fp32(record)  # (nb,)
    table = _byte_table(record.device)  # (256, 2)
    out = torch.empty(record.num_blocks * bs, dtype=dtype, device=record.device)
    for start in range(0, record.num_blocks, _CHUNK_BLOCKS):
        stop = min(start + _CHUNK_BLOCKS, record.num_blocks)
        words = torch.take(table, record.codes[start * bs // 2: stop * bs // 2].long())  # (nb * bs / 2,) int64
        values = words.view(torch.float32).view(stop - start, bs)  # (nb, bs) code values, fp32
        values.mul_(absmax[start:stop].unsqueeze(1))  # the product in fp32, then rounded once into dtype
        out[start * bs: stop * bs].view(stop - start, bs).copy_(values)
    return out[: record.numel].view(record.shape)
