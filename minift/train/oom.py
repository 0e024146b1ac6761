"""The message for CUDA out-of-memory: what the weights, gradients and optimizer states take, and what to change.

The arithmetic is the standard one (weights + gradients of what trains + AdamW's two fp32-sized states,
ZeRO paper, arXiv:1910.02054 §3.1); activations come on top and grow with batch size × sequence length.
``python -m minift.memory`` gives the full estimate, activations included.
"""
from __future__ import annotations

import torch
from torch import nn

GIB = 1024 ** 3


def static_memory(model: nn.Module) -> dict:
    """Bytes of weights, gradients and AdamW states (exp_avg, exp_avg_sq) of ``model`` as it is set up."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.numel() * p.element_size() for p in trainable)
    states = sum(2 * p.numel() * p.element_size() for p in trainable)
    return {"weights": weights, "gradients": grads, "optimizer": states}


def out_of_memory_message(model: nn.Module, config, device: torch.device) -> str:
    """A readable explanation of a CUDA OOM with the memory arithmetic and the options that reduce it."""
    parts = static_memory(model)
    lines = [(f"CUDA ran out of memory on {device} while training ({config.method}, batch {config.batch_size}, "
             f"max length {config.max_length}, precision {config.precision}).")]
    lines.append("  estimate before activations: " + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in parts.items())
                 + f" = {sum(parts.values()) / GIB:.2f} GiB; activations grow with batch × length")
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        lines.append(f"  device: {total / GIB:.1f} GiB, peak allocated {torch.cuda.max_memory_allocated(device) / GIB:.2f}"
                     " GiB")
    lines.append("  try: a smaller --batch-size with a larger --grad-accum (same global batch), --max-length, "
                 "--gradient-checkpointing true, --precision bf16, or a PEFT --method (lora) instead of full; "
                 "`python -m minift.memory --model PATH` estimates every option")
    return "\n".join(lines)
