"""The message for CUDA out-of-memory: what the weights, gradients and optimizer states take, and what to change.

The arithmetic is the standard one (weights + gradients of what trains + AdamW's two fp32-sized states,
ZeRO paper, arXiv:1910.02054 §3.1); activations come on top and grow with batch size × sequence length.
``python -m minift.memory`` gives the full estimate, activations included. When the estimate says a 4-bit frozen
base (``--quantize nf4``, QLoRA) would fit the GPU, the message suggests it; under ``torchrun`` with DDP, so does
``--shard fsdp`` when its per-GPU estimate fits. The estimate is per GPU, for the run's processes and ``--shard``.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

GIB = 1024 ** 3


def static_memory(model: nn.Module) -> dict:
    """Bytes of weights (parameters, and the codes and scales of a 4-bit base), gradients and AdamW states
    (exp_avg, exp_avg_sq) of ``model`` as it is set up."""
    from minift.quant import nf4_layers

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(layer.nbytes for layer in nf4_layers(model).values())
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    states = sum(2 * p.numel() * p.element_size() for p in trainable)
    return {"weights": weights, "gradients": grads, "optimizer": states}


def estimator_lines(model: nn.Module, config, device: torch.device) -> list:
    """The full estimate of ``minift.memory`` (activations included) and the largest batch that fits, for the run's
    own ``Method`` and settings, and a 4-bit base (``--quantize nf4``) when it would fit; nothing when the estimator
    cannot describe this model (the basic arithmetic above still stands)."""
    try:
        from minift.memory.estimate import Setup, estimate, largest_batch
        from minift.train.distributed import world_size

        quantize = getattr(config, "quantize", None)
        setup = Setup(batch_size=config.batch_size, max_length=config.max_length, precision=config.precision,
                      gradient_checkpointing=config.gradient_checkpointing, head=model.head_kind, padded=True,
                      device=device.type, grad_accum=config.grad_accum, quantize=quantize,
                      double_quant=getattr(config, "double_quant", True), gpus=world_size(),
                      shard=getattr(config, "shard", None) or "ddp")
        method = getattr(model, "peft_spec", None) or config.method_spec  # as built: a prompt's token ids filled in
        result = estimate(model.config, method, setup)
        lines = [(f"  minift.memory estimate: peak {result.peak / GIB:.2f} GiB ({result.peak_phase}), activations "
                 f"{result.activations.total / GIB:.2f} GiB at batch {config.batch_size} × {config.max_length} tokens")]
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            biggest = largest_batch(model.config, method, setup, total)
            lines.append(f"  largest batch that fits this GPU: {biggest}")
            if quantize is None:
                lines += _qlora_line(model.config, method, setup, total)
            lines += fsdp_line(model.config, method, setup, total)
        return lines
    except Exception:  # noqa: BLE001 - the estimate is a courtesy in an error message; never mask the OOM itself
        return []


def _qlora_line(model_config, method, setup, gpu_bytes: int) -> list:
    """A suggestion of ``--quantize nf4`` (with LoRA for a full fine-tuning run) when the estimate says it fits."""
    from minift.memory.estimate import estimate, fits
    from minift.peft.config import Method

    flags = "--quantize nf4" if method.name != "full" else "--method lora --quantize nf4"
    method = method if method.name != "full" else Method("lora")
    qlora = estimate(model_config, method, replace(setup, quantize="nf4"))
    if not fits(qlora, gpu_bytes):
        return []
    return [f"  {flags} (a 4-bit frozen base, QLoRA) would fit: estimated peak {qlora.peak / GIB:.2f} GiB"]


def fsdp_line(model_config, method, setup, gpu_bytes: int) -> list:
    """A suggestion of ``--shard fsdp`` for a DDP run of several processes when its per-GPU estimate fits."""
    from minift.memory.estimate import estimate, fits

    if setup.gpus < 2 or setup.shard == "fsdp":
        return []
    sharded = estimate(model_config, method, replace(setup, shard="fsdp"))
    if not fits(sharded, gpu_bytes):
        return []
    return [f"  --shard fsdp (weights, gradients and optimizer states split over the {setup.gpus} processes) would "
            f"fit: estimated peak {sharded.peak / GIB:.2f} GiB per GPU (python -m minift.memory ... --gpus "
            f"{setup.gpus} --shard fsdp)"]


def out_of_memory_message(model: nn.Module, config, device: torch.device) -> str:
    """A readable explanation of a CUDA OOM with the memory arithmetic and the options that reduce it.

    Args:
        model: the unwrapped model being trained (its PEFT ``Method`` in ``model.peft_spec``).
        config: the run's ``TrainConfig`` (its ``method_spec``, batch size, length, precision, ...).
    """
    parts = static_memory(model)
    lines = [(f"CUDA ran out of memory on {device} while training ({config.method_spec.label()}, batch "
              f"{config.batch_size}, max length {config.max_length}, precision {config.precision}).")]
    lines.append("  estimate before activations: " + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in parts.items())
                 + f" = {sum(parts.values()) / GIB:.2f} GiB; activations grow with batch × length")
    lines += estimator_lines(model, config, device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        peak = torch.cuda.max_memory_allocated(device)
        lines.append(f"  device: {total / GIB:.1f} GiB, peak allocated {peak / GIB:.2f} GiB")
    lines.append("  try: a smaller --batch-size with a larger --grad-accum (same global batch), --max-length, "
                 "--gradient-checkpointing true, --precision bf16, a PEFT --method (lora) instead of full, or a 4-bit "
                 "base (--quantize nf4), under torchrun --shard fsdp; "
                 "`python -m minift.memory --model PATH` estimates every option")
    return "\n".join(lines)
