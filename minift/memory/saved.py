"""Measure activation memory on any device: the bytes of the tensors autograd keeps for backward.

``measure_saved(model, batch, kind)`` runs one training forward and the loss under
``torch.autograd.graph.saved_tensors_hooks`` and adds up the *storages* of every saved tensor once (a view, or
one tensor saved by several operations, is one storage — that is what occupies memory). Excluded, as the
estimator defines activations:

- parameters (the weights are counted as weights; frozen ones are saved by ``Linear`` for grad-input);
- autocast's low-precision copies of the weights (counted separately as ``weight_copies``): recognised as the
  outputs of ``aten._to_copy`` on a parameter, seen by a ``TorchDispatchMode`` during the forward.

With gradient checkpointing the blocks' internals are saved by the checkpoint's own hooks (and rebuilt in
backward), so what a checkpointed block keeps are its *inputs*; they are read from a forward pre-hook on each
block and counted with the rest (their storages deduplicated like the saved tensors).
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from minift.losses import loss_sum


@dataclass
class SavedBytes:
    """Measured bytes, by where they were saved."""

    groups: dict[str, int] = field(default_factory=dict)  # "embeddings" | "layer i" | "head" → bytes
    weight_copies: int = 0  # autocast copies of weights kept for backward
    block_inputs: int = 0  # checkpointed blocks' inputs (part of "layer i" groups too)

    @property
    def total(self) -> int:
        return sum(self.groups.values())

    def layer(self, i: int) -> int:
        return self.groups.get(f"layer {i}", 0)


class _WeightCopies(TorchDispatchMode):
    """Collects the storages of ``_to_copy`` results whose input is a parameter (autocast weight casts)."""

    def __init__(self, param_keys: set[int]):
        super().__init__()
        self.param_keys, self.copies = param_keys, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        is_cast = func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor)
        if is_cast and _key(args[0]) in self.param_keys:
            # Hold the copy until the forward ends: a freed copy's address could be reused by an activation.
            self.copies[_key(out)] = out
        return out


def _key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


def measure_saved(model: nn.Module, batch: dict, kind: str | None, autocast_dtype: torch.dtype | None = None,
                  backward: bool = True) -> SavedBytes:
    """Bytes of the tensors one forward + loss keeps for backward.

    Args:
        model: a ``TaskModel`` (or ``PromptModel``), in train mode for dropout to count.
        batch: model inputs (``input_ids``, ``attention_mask``, ...) plus ``labels`` when ``kind`` is given.
        kind: the loss (``minift.losses.loss_sum``): ``classification`` | ``regression`` |
            ``token-classification`` | ``causal-lm``, or None to stop at the model output.
        autocast_dtype: run under ``torch.autocast(device, dtype)`` (mixed precision), or None.
        backward: run backward afterwards (checks the graph is sound and frees it).

    Returns:
        ``SavedBytes`` with per-group bytes; ``groups["layer i"]`` is block i, ``"embeddings"`` what comes
        before the first block, ``"head"`` what comes after the last one (final norm, head, loss).
    """
    params = {_key(p) for p in model.parameters()}
    blocks = list(model.blocks)
    seen: dict[tuple, tuple[int, str]] = {}
    state = {"group": "embeddings"}
    result = SavedBytes()

    def keep(t: torch.Tensor, group: str) -> None:
        key = _key(t)
        if key in copies.copies:
            weight_copies.setdefault(key, t.untyped_storage().nbytes())
        elif key not in params:
            seen.setdefault(key, (t.untyped_storage().nbytes(), group))

    def pack(t: torch.Tensor) -> torch.Tensor:
        keep(t, state["group"])
        return t

    def pre_hook(index: int):
        def hook(module, args, kwargs):
            state["group"] = f"layer {index}"
            if model.gradient_checkpointing:
                for a in [*args, *kwargs.values()]:
                    if isinstance(a, torch.Tensor) and _key(a) not in seen:
                        keep(a, state["group"])
                        result.block_inputs += a.untyped_storage().nbytes()
        return hook

    def post_hook(module, args, output):
        state["group"] = "head"

    handles = [b.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles.append(blocks[-1].register_forward_hook(post_hook))
    device = next(model.parameters()).device
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    copies, weight_copies = _WeightCopies(params), {}
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                (copies if autocast_dtype else nullcontext()), amp:
            out = model(**inputs)
            loss = loss_sum(kind, out, batch["labels"]) if kind is not None else out.float().sum()
    finally:
        for h in handles:
            h.remove()
    groups: dict[str, int] = defaultdict(int)
    for nbytes, group in seen.values():
        groups[group] += nbytes
    result.groups = dict(groups)
    result.weight_copies = sum(weight_copies.values())
    copies.copies.clear()
    if backward:
        loss.backward()
    return result

