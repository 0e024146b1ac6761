"""``--compile``: regional compilation, ``torch.compile`` of each transformer block.

Compiling the blocks one by one instead of the whole model (torchtune's ``compile_model``, the PyTorch
"regional compilation" recipe) keeps start-up short — the blocks share one code object, so the block is compiled
once and reused by every layer — and leaves the parts that vary between runs (the embeddings, a soft prompt, the
task head, the loss) eager. It is done after the PEFT method is applied, so LoRA's side paths and adapters are
compiled inside their block; before DDP / FSDP wrap the model (their hooks run around the compiled blocks);
``run_block``'s gradient checkpointing calls the compiled block. Dropout inside a compiled block is inductor's
fused random numbers (``minift.models.dropout`` steps aside under compilation).

Batches of varying length (length grouping) make Dynamo mark the sequence dimension dynamic after the second
length it sees: one more compilation, not one per length.

Compilation happens at the first calls; :func:`compile_seconds` reads Dynamo's own clock of it, so a run can
report the compile time apart from the training time.
"""
from __future__ import annotations

import shutil

import torch
from torch import nn


class CompileError(RuntimeError):
    """``--compile`` cannot work here (no C++ compiler for inductor on the CPU, or no blocks to compile)."""


def has_cpp_compiler() -> bool:
    """Whether a C++ compiler is on PATH (inductor's CPU backend builds C++ kernels)."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++", "cc"))


def compile_blocks(model: nn.Module, backend: str = "inductor", device: torch.device | str = "cpu") -> int:
    """Compile every block of ``model.blocks`` in place (``nn.Module.compile``); returns how many.

    Args:
        model: a minift model (``TaskModel``, a PEFT-wrapped one), before any DDP / FSDP wrapper.
        backend: the ``torch.compile`` backend (``inductor``; tests also use ``aot_eager``, which needs no compiler).
        device: the run's device: inductor on the CPU needs a C++ compiler, checked here with a clear error.
    """
    blocks = getattr(model, "blocks", None)
    if not blocks:
        raise CompileError(f"--compile: {type(model).__name__} has no transformer blocks to compile")
    if backend == "inductor" and torch.device(device).type == "cpu" and not has_cpp_compiler():
        raise CompileError("--compile on the CPU needs a C++ compiler for inductor (g++ or clang++ on PATH); "
                           "install one or leave --compile off")
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


def compile_seconds() -> float:
    """Seconds Dynamo and its backend have spent compiling in this process so far (0.0 when nothing compiled or the
    clock is unavailable in this torch)."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:  # a torch without the metric: the log then shows 0
        return 0.0
    # one entry per frame compiled (Dynamo's trace and the forward's compile), then the backward graphs compiled
    # lazily at the first backward
    phases = ("_compile.compile_inner", "backward._backward_impl")
    return float(sum(sum(compilation_time_metrics.get(phase, [])) for phase in phases))
