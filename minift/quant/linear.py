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

Two dtypes (bitsandbytes' ``Linear4bit`` has the same pair): ``dtype`` is the layer's parameter dtype (its bias,
the parameters a PEFT method adds beside it, the weight a merged export writes); ``compute_dtype`` is the dtype
the weight is dequantised to and the matmul runs in outside autocast (the input is cast to it and the output
back to the input's dtype). Under ``torch.autocast`` the autocast dtype is the compute dtype and the output is in
it, as ``nn.Linear``'s. ``minift.quant.compute_dtype_for`` says which compute dtype a run uses (bf16 on CUDA).
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


def autocast_dtype_of(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype for ``x``'s device when autocast is on there, else None."""
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


class NF4Linear(nn.Module):
    """A frozen ``y = x W^T + b`` whose ``W`` (C_out, C_in) is stored in NF4.

    Args:
        in_features: ``C_in``.
        out_features: ``C_out``.
        bias: whether there is a bias (a frozen parameter in ``dtype``; BitFit may set it trainable).
        block_size: weights per absmax block (64).
        double_quant: whether the absmax are quantised to 8 bits (blocks of ``double_block_size`` = 256).
        device: where the (empty) buffers are created; "meta" gives a layer for counting bytes without memory.
        dtype: the parameter dtype (the bias's; default: torch's default dtype).
        compute_dtype: the dtype of the dequantised weight and the matmul outside autocast (default: ``dtype``).

    Buffers (filled by ``from_linear``, ``init_normal_`` or ``load_state_dict``): ``weight_codes`` uint8
    (C_out * C_in / 2, padded to whole blocks), ``weight_absmax`` fp32 (nb,) or uint8 (nb,) with double
    quantisation, then also ``weight_absmax_scale`` fp32 (ceil(nb / 256),) and ``weight_absmax_offset`` fp32 ().
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, block_size: int = BLOCK_SIZE,
                 double_quant: bool = True, double_block_size: int = DOUBLE_BLOCK_SIZE, device=None, dtype=None,
                 compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.block_size, self.double_quant, self.double_block_size = block_size, double_quant, double_block_size
        self.dtype = dtype or torch.get_default_dtype()
        self.compute_dtype = compute_dtype or self.dtype
        empty = quantize_nf4(torch.empty(out_features, in_features, device="meta"), block_size, double_quant,
                             double_block_size)
        for name, field in BUFFERS.items():
            t = getattr(empty, field)
            if t is not None:
                self.register_buffer(name, torch.empty(t.shape, dtype=t.dtype, device=device))
        bias_tensor = torch.zeros(out_features, device=device, dtype=self.dtype) if bias else None
        self.bias = nn.Parameter(bias_tensor, requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, block_size: int = BLOCK_SIZE, double_quant: bool = True,
                    compute_dtype: torch.dtype | None = None) -> NF4Linear:
        """Quantise ``linear``'s weight in one pass (on its device) into a new ``NF4Linear``.

        The layer's ``dtype`` is the weight's; its bias is ``linear``'s own parameter, frozen (a method that trains
        it, BitFit, sets ``requires_grad`` afterwards). The caller drops ``linear`` to free the fp weight.
        """
        weight = linear.weight
        new = cls(linear.in_features, linear.out_features, bias=False, block_size=block_size,
                  double_quant=double_quant, device="meta", dtype=weight.dtype, compute_dtype=compute_dtype)
        new.set_weight(quantize_nf4(weight, block_size, double_quant))
        if linear.bias is not None:
            new.bias = linear.bias.requires_grad_(False)
        new.train(linear.training)
        return new

    def set_weight(self, record: NF4Weight) -> None:
        """Store ``record`` (from ``quantize_nf4`` with this layer's block sizes) as the layer's buffers."""
        if tuple(record.shape) != (self.out_features, self.in_features) or record.double_quant != self.double_quant:
            raise ValueError(f"an NF4 weight of shape {tuple(record.shape)} (double_quant={record.double_quant}) "
                             f"does not fit {self.extra_repr()}")
        for name, field in BUFFERS.items():
            if getattr(record, field) is not None:
                setattr(self, name, getattr(record, field))

    def use_weight_of(self, other: NF4Linear) -> None:
        """Point this layer at ``other``'s codes, scales and bias (the same tensors, no copy), with its dtypes."""
        for name in BUFFERS:
            if name in other._buffers:
                setattr(self, name, other._buffers[name])
        self.bias = other.bias
        self.dtype, self.compute_dtype = other.dtype, other.compute_dtype
        self.train(other.training)

    @torch.no_grad()
    def init_normal_(self, std: float = 0.02, generator: torch.Generator | None = None) -> NF4Linear:
        """Quantise a fresh N(0, std²) weight into the buffers, on their device (random models for memory and speed
        checks: only this layer's fp32 weight is ever alive beside the 4-bit ones)."""
        device = self.weight_codes.device
        weight = torch.empty(self.out_features, self.in_features, device=device).normal_(0.0, std,
                                                                                         generator=generator)
        self.set_weight(quantize_nf4(weight, self.block_size, self.double_quant, self.double_block_size))
        return self

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
        """x: (..., C_in) -> (..., C_out): in the autocast dtype under autocast, else in x's dtype (computed in
        ``compute_dtype``)."""
        amp = autocast_dtype_of(x)
        dtype = amp or self.compute_dtype
        bias = self.bias.to(dtype) if self.bias is not None else None
        if x.is_meta or self.weight_codes.is_meta:
            w = torch.empty(self.out_features, self.in_features, dtype=dtype, device="meta")
            y = F.linear(x.to(dtype), w, bias)
        else:
            y = _NF4LinearFunction.apply(x.to(dtype), self.nf4_weight, bias, dtype)  # (..., C_out)
        return y if amp is not None else y.to(x.dtype)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight (C_out, C_in) in ``dtype`` (default: the layer's ``dtype``), e.g. to merge LoRA in fp32."""
        return dequantize_nf4(self.nf4_weight, dtype or self.dtype)

    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A plain ``nn.Linear`` with the dequantised weight in ``dtype`` (default: the layer's ``dtype``) and this
        layer's bias, cast."""
        dtype = dtype or self.dtype
        weight = self.dequantized_weight(dtype)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach().to(dtype), requires_grad=self.bias.requires_grad)
        linear.train(self.training)
        return linear

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) / .half() must move the block scales but not round them: they stay fp32. A
        # floating cast changes the layer's dtypes instead (and the bias, an ordinary parameter, follows it).
        scales = {name: t for name, t in self._buffers.items() if t is not None and t.is_floating_point()}
        probe = torch.empty(0, dtype=self.dtype, device=self.weight_codes.device)
        super()._apply(fn, recurse)
        cast = fn(probe).dtype
        if cast != self.dtype:
            self.dtype = self.compute_dtype = cast
        for name, old in scales.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:
                self._buffers[name] = old.to(new.device)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block_size={self.block_size}, double_quant={self.double_quant}, dtype={self.dtype}, "
                f"compute_dtype={self.compute_dtype}")
