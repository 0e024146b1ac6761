"""``NF4Linear``: a frozen linear layer stored as 4-bit NormalFloat codes (QLoRA's base layer).

Dettmers et al., "QLoRA", https://arxiv.org/abs/2305.14314, Section 3, Eq. 5 and 6: the base weight is kept in
NF4 (``minift.quant.nf4``) and dequantised to the compute dtype (BF16 in the paper) for each matmul; gradients
flow through the frozen weight to the input (and on to the LoRA adapters), never into the weight.

The layer keeps only the codes and block scales, as buffers (``.to(device)`` moves them, ``state_dict`` carries
them under ``weight_codes``, ``weight_absmax`` and, with double quantisation, ``weight_absmax_scale`` /
``weight_absmax_offset``); it has no fp weight parameter. ``forward`` dequantises the whole weight once, does one
``F.linear`` and drops it; the backward pass dequantises again instead of autograd keeping the weight alive
between the two (``_NF4LinearFunction``, as torchao's ``linear_nf4``). Under gradient checkpointing the block is
recomputed, which dequantises a third time: 4-bit memory is bought with that arithmetic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minift.quant.nf4 import BLOCK_SIZE, DOUBLE_BLOCK_SIZE, NF4Weight, dequantize_nf4, nf4_bytes, quantize_nf4

# buffer name → NF4Weight field (absmax_scale / absmax_offset only with double quantisation)
BUFFERS = {"weight_codes": "codes", "weight_absmax": "absmax", "weight_absmax_scale": "absmax_scale",
           "weight_absmax_offset": "absmax_offset"}


class _NF4LinearFunction(torch.autograd.Function):
    """``y = x W^T + b`` with ``W`` dequantised from NF4 in forward and again in backward (not saved)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: NF4Weight, bias: torch.Tensor | None, dtype: torch.dtype):
        ctx.weight, ctx.dtype, ctx.x_dtype = weight, dtype, x.dtype
        ctx.has_bias = bias is not None
        w = dequantize_nf4(weight, dtype)  # (C_out, C_in), alive for this matmul only
        return F.linear(x, w, bias)  # (..., C_out)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            w = dequantize_nf4(ctx.weight, ctx.dtype)  # recomputed: (C_out, C_in)
            grad_x = (grad_out.to(ctx.dtype) @ w).to(ctx.x_dtype)  # (..., C_in)
        if ctx.has_bias and ctx.needs_input_grad[2]:  # only when a method (BitFit) trains the bias
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.dtype)  # (C_out,)
        return grad_x, None, grad_bias, None


def compute_dtype_of(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` runs in: the autocast dtype inside autocast, else ``x``'s own."""
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class NF4Linear(nn.Module):
    """A frozen ``y = x W^T + b`` whose ``W`` (C_out, C_in) is stored in NF4.

    Args:
        in_features: ``C_in``.
        out_features: ``C_out``.
        bias: whether there is a bias (a frozen parameter in ``dtype``; BitFit may set it trainable).
        block_size: weights per absmax block (64).
        double_quant: whether the absmax are quantised to 8 bits (blocks of ``double_block_size`` = 256).
        device: where the (empty) buffers are created; "meta" gives a layer for counting bytes without memory.
        dtype: the layer's compute dtype: the bias's dtype and ``dequantized_weight``'s default.

    Buffers (filled by ``from_linear`` or ``load_state_dict``): ``weight_codes`` uint8 (C_out * C_in / 2, padded to
    whole blocks), ``weight_absmax`` fp32 (nb,) or uint8 (nb,) with double quantisation, then also
    ``weight_absmax_scale`` fp32 (ceil(nb / 256),) and ``weight_absmax_offset`` fp32 ().
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, block_size: int = BLOCK_SIZE,
                 double_quant: bool = True, double_block_size: int = DOUBLE_BLOCK_SIZE, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.block_size, self.double_quant, self.double_block_size = block_size, double_quant, double_block_size
        self.compute_dtype = dtype or torch.get_default_dtype()
        empty = quantize_nf4(torch.empty(out_features, in_features, device="meta"), block_size, double_quant,
                             double_block_size)
        for name, field in BUFFERS.items():
            t = getattr(empty, field)
            if t is not None:
                self.register_buffer(name, torch.empty(t.shape, dtype=t.dtype, device=device))
        bias_tensor = torch.zeros(out_features, device=device, dtype=self.compute_dtype) if bias else None
        self.bias = nn.Parameter(bias_tensor, requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, block_size: int = BLOCK_SIZE, double_quant: bool = True,
                    compute_dtype: torch.dtype | None = None) -> NF4Linear:
        """Quantise ``linear``'s weight in one pass (on its device) into a new ``NF4Linear``.

        The bias is frozen (reused as it is when already in ``compute_dtype``, default: the weight's dtype; a
        method that trains it, BitFit, sets ``requires_grad`` afterwards). The caller drops ``linear`` to free the
        fp weight.
        """
        weight = linear.weight
        dtype = compute_dtype or weight.dtype
        new = cls(linear.in_features, linear.out_features, bias=False, block_size=block_size,
                  double_quant=double_quant, device="meta", dtype=dtype)
        record = quantize_nf4(weight, block_size, double_quant)
        for name, field in BUFFERS.items():
            if getattr(record, field) is not None:
                setattr(new, name, getattr(record, field))
        if linear.bias is not None:
            bias = linear.bias
            if bias.dtype != dtype:
                bias = nn.Parameter(bias.detach().to(dtype))
            new.bias = bias.requires_grad_(False)
        new.train(linear.training)
        return new

    @property
    def nf4_weight(self) -> NF4Weight:
        """The buffers seen as an ``NF4Weight`` record (no copy)."""
        return NF4Weight(
            self.weight_codes, self.weight_absmax, torch.Size((self.out_features, self.in_features)),
            self.block_size, getattr(self, "weight_absmax_scale", None), getattr(self, "weight_absmax_offset", None),
            self.double_block_size,
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the quantised weight (codes and scales; the bias is not included)."""
        return nf4_bytes(self.in_features * self.out_features, self.block_size, self.double_quant,
                         self.double_block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C_in) -> (..., C_out), computed in x's dtype (or the autocast dtype)."""
        dtype = compute_dtype_of(x)
        bias = self.bias.to(dtype) if self.bias is not None else None
        if x.is_meta or self.weight_codes.is_meta:
            return F.linear(x.to(dtype), torch.empty(self.out_features, self.in_features, dtype=dtype,
                                                     device="meta"), bias)
        return _NF4LinearFunction.apply(x, self.nf4_weight, bias, dtype)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight (C_out, C_in) in ``dtype`` (default: the compute dtype), e.g. to merge LoRA in fp32 for export."""
        return dequantize_nf4(self.nf4_weight, dtype or self.compute_dtype)

    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A plain ``nn.Linear`` with the dequantised weight in ``dtype`` (and this layer's bias, cast)."""
        dtype = dtype or self.compute_dtype
        weight = self.dequantized_weight(dtype)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().to(dtype), requires_grad=self.bias.requires_grad)
        linear.train(self.training)
        return linear

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) / .half() must move the block scales but not round them: they stay fp32. A
        # floating cast changes the compute dtype instead (and the bias, an ordinary parameter, follows it).
        scales = {name: t for name, t in self._buffers.items() if t is not None and t.is_floating_point()}
        probe = torch.empty(0, dtype=self.compute_dtype, device=self.weight_codes.device)
        super()._apply(fn, recurse)
        self.compute_dtype = fn(probe).dtype
        for name, old in scales.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block_size={self.block_size}, double_quant={self.double_quant}, compute_dtype={self.compute_dtype}")
