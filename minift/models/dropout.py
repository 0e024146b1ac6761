"""Dropout whose masks cost a fraction of ``torch.bernoulli_`` on the CPU.

Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting" (JMLR 2014): every element
is kept independently with probability ``1 - p`` and scaled by ``1 / (1 - p)`` (inverted dropout, as
``torch.nn.functional.dropout``).

Why not ``F.dropout`` on the CPU: it draws one Bernoulli variable per element with ``bernoulli_`` (on non-Intel
CPUs one Mersenne-Twister call and a float comparison per element, serially), writes a float mask, divides it by
``1 - p`` and multiplies — measured at 28% of a bf16 MiniLM LoRA step and 11-21% of an fp32 one (issue 13).
Here the same generator (the device's default ``torch.Generator``, so ``torch.manual_seed``, checkpoint RNG
states and gradient checkpointing's replay behave as before) fills ``n / 4`` 64-bit words in one ``random_`` call;
each word is cut into four independent, uniform 16-bit fields and an element is kept when its field is below
``round((1 - p) · 2^16)``. The keep probability is therefore ``(1 - p)`` rounded to a multiple of ``2^-16``
(0.1 → 0.899994), and the scale is the inverse of that rounded probability, so ``E[dropout(x)] = x`` exactly.
Only a boolean mask is kept for backward (1 byte per element instead of 4).

On other devices (CUDA's dropout is one fused Philox kernel) and under ``torch.compile`` (inductor generates its
own fused random numbers) ``F.dropout`` is used.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FIELD_BITS = 16  # each random 64-bit word gives four independent uniform 16-bit fields
_LEVELS = 1 << FIELD_BITS


def keep_mask(shape: tuple, p: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> tuple:
    """A boolean mask of ``shape``, each element True (kept) independently with probability ``≈ 1 - p``.

    Args:
        shape: the mask's shape.
        p: drop probability in ``[0, 1)``.
        device, generator: where to draw (default: the device's default generator).
    Returns:
        ``(keep, scale)``: the boolean mask and ``1 / P(keep)`` (the exact, rounded keep probability's inverse).
    """
    n = math.prod(shape)
    threshold = max(1, round((1.0 - p) * _LEVELS))  # keep iff field < threshold, field uniform on [0, 2^16)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None, generator=generator)  # all 64 bits uniform (random_() alone leaves the top 0)
    fields = words.view(torch.int16)[:n].view(shape)  # signed: field - 2^15, uniform on [-2^15, 2^15)
    return fields < threshold - _LEVELS // 2, _LEVELS / threshold


class _KeepScale(torch.autograd.Function):
    """``x * keep * scale``, saving only the boolean mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` (any shape) with drop probability ``p``; ``x`` itself when not training."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling() or not 0.0 < p < 1.0:
        return F.dropout(x, p, True)  # fused on CUDA / by inductor; p == 1 (all dropped) and bad p as torch says
    keep, scale = keep_mask(x.shape, p, x.device)
    return _KeepScale.apply(x, keep, scale)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same constructor, ``p``, ``extra_repr`` and ``isinstance``) drawing its masks with
    :func:`dropout`. ``inplace=True`` is not supported (minift never asks for it)."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        if inplace:
            raise ValueError("minift's Dropout does not work in place")
        super().__init__(p, inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
