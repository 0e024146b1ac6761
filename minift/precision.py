"""Precision names, one vocabulary for every command (``minift.train``, ``minift.memory``, ...).

- ``fp32``: fp32 weights, fp32 compute.
- ``fp16``: fp32 master weights, fp16 autocast, a ``GradScaler`` (Micikevicius et al., "Mixed Precision
  Training", arXiv:1710.03740, §3.2: loss scaling).
- ``bf16``: fp32 master weights, bf16 autocast (no scaler: bf16 has fp32's exponent range).
- ``bf16-pure``: bf16 weights, gradients and optimizer states, no autocast.
- ``auto`` (``minift.train``'s default): ``bf16`` where bf16 matrix products are fast — a CUDA device that supports
  bf16, a CPU with AMX or AVX-512-BF16 — and ``fp32`` otherwise. ``resolve(name, device)`` turns it into one of the
  names above; a run records the resolved name (config.yaml, summary.json), so ``--resume`` keeps it. The
  environment variable ``MINIFT_CPU_BF16=0`` (or ``1``) overrides what is detected about the CPU (the test suite
  sets 0, so that its runs are fp32 on any CPU).

Earlier spellings of ``minift.memory`` are read as aliases for one release: ``mixed-bf16`` → ``bf16``,
``mixed-fp16`` → ``fp16``. (``minift.memory --precision bf16`` used to mean pure bf16; it now means autocast, as
in ``minift.train``; pure bf16 is ``bf16-pure`` in both.)
"""
from __future__ import annotations

import os
from collections.abc import Collection
from contextlib import nullcontext
from functools import cache
from pathlib import Path

import torch

PRECISIONS = ("fp32", "fp16", "bf16", "bf16-pure")
ALIASES = {"mixed-bf16": "bf16", "mixed-fp16": "fp16"}
AUTO = "auto"
# the /proc/cpuinfo flags of CPUs whose bf16 matrix products beat fp32 (AMX tiles, AVX-512 BF16 dot products)
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")
CPU_BF16_ENV = "MINIFT_CPU_BF16"  # "0" / "1": what auto takes the CPU to be, whatever is detected


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


@cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has AMX-BF16 or AVX-512-BF16 (torch's own check, else ``/proc/cpuinfo``'s flags)."""
    cpu = getattr(torch, "cpu", None)
    for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        try:
            if getattr(cpu, check)():
                return True
        except (AttributeError, RuntimeError):
            pass
    try:
        flags = CPUINFO.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve(name: str, device: torch.device | str) -> str:
    """The canonical precision of ``name`` on ``device``: ``auto`` → ``bf16`` (autocast) on a CUDA device that
    supports bf16 and on a CPU with AMX / AVX-512-BF16 (:func:`cpu_has_fast_bf16`), else ``fp32``; any other
    name → :func:`canonical`."""
    if name != AUTO:
        try:
            return canonical(name)
        except ValueError:
            raise ValueError(f"unknown precision {name!r}; choose {AUTO} or one of {', '.join(PRECISIONS)}") from None
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if kind == "cpu":
        forced = os.environ.get(CPU_BF16_ENV, "").strip()
        if forced in ("0", "1"):
            return "bf16" if forced == "1" else "fp32"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def frozen_in_compute_dtype(model: torch.nn.Module, precision: str, skip: Collection[str] = ()) -> int:
    """Store the frozen weights and biases of every ``nn.Linear`` in the autocast dtype, once.

    Autocast casts a linear layer's fp32 weight to bf16 / fp16 on every call, and caches the cast only for leaves
    that require gradients: the frozen base of a PEFT method was cast again on every step (16% of a bf16 MiniLM
    LoRA step, issue 13). Autocast then finds the weight in its dtype already and uses it: the products are
    bit-identical, each weight is half the memory, and trainable parameters keep their fp32 master weights.

    Args:
        model: the model (before DDP wraps it; FSDP's mixed-precision policy does this itself).
        precision: a ``minift.precision`` name; nothing happens without autocast (fp32, bf16-pure).
        skip: parameter names (as in ``model.named_parameters()``) to leave as they are — those a run saves.
    Returns:
        The number of tensors cast. A parameter also used by another kind of module (a tied embedding) stays.
    """
    dtype = autocast_dtype(precision)
    if dtype is None:
        return 0
    elsewhere = {id(p) for m in model.modules() if not isinstance(m, torch.nn.Linear)
                 for p in m.parameters(recurse=False)}
    skipped = {id(p) for name, p in model.named_parameters() if name in set(skip)}
    cast: dict = {}  # id(old) → new, so a weight tied between two linears stays one tensor
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        for name, p in list(module.named_parameters(recurse=False)):
            if p.requires_grad or not p.is_floating_point() or p.dtype == dtype or id(p) in elsewhere | skipped:
                continue
            if id(p) not in cast:
                cast[id(p)] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
            setattr(module, name, cast[id(p)])
    return len(cast)
