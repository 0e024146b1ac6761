"""Precision names, one vocabulary for every command (``minift.train``, ``minift.memory``, ...).

- ``fp32``: fp32 weights, fp32 compute.
- ``fp16``: fp32 master weights, fp16 autocast, a ``GradScaler`` (Micikevicius et al., "Mixed Precision
  Training", arXiv:1710.03740, §3.2: loss scaling).
- ``bf16``: fp32 master weights, bf16 autocast (no scaler: bf16 has fp32's exponent range).
- ``bf16-pure``: bf16 weights, gradients and optimizer states, no autocast.

Earlier spellings of ``minift.memory`` are read as aliases for one release: ``mixed-bf16`` → ``bf16``,
``mixed-fp16`` → ``fp16``. (``minift.memory --precision bf16`` used to mean pure bf16; it now means autocast, as
in ``minift.train``; pure bf16 is ``bf16-pure`` in both.)
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("fp32", "fp16", "bf16", "bf16-pure")
ALIASES = {"mixed-bf16": "bf16", "mixed-fp16": "fp16"}


def canonical(name: str) -> str:
    """The canonical precision name of ``name`` (an alias is translated); a ``ValueError`` lists the choices."""
    name = ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return name


def param_dtype(precision: str) -> torch.dtype:
    """The dtype the weights (and so gradients and AdamW states) are kept in."""
    return torch.bfloat16 if canonical(precision) == "bf16-pure" else torch.float32


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast compute dtype of a mixed precision, None when there is no autocast."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(canonical(precision))


def uses_grad_scaler(precision: str) -> bool:
    """Whether a ``GradScaler`` is needed (fp16 gradients can underflow)."""
    return canonical(precision) == "fp16"


def autocast(precision: str, device: torch.device | str):
    """The autocast context of ``precision`` on ``device`` (a null context for fp32 and bf16-pure)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
