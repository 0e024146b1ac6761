"""One optimizer step: the backward window of accumulated micro-batches, then the update (nanoGPT's ``train.py``
inner loop, STYLE.md point 7).

``backward_window``: each micro-batch is forwarded under the precision's autocast; its *summed* loss
(``minift.losses``) is divided by the number of targets in the whole window on all processes, so gradient
accumulation — a short last window included — leaves the gradients of one big batch. Under DDP the gradients are
all-reduced once, on the window's last micro-batch; under FSDP they are reduce-scattered after every micro-batch,
so that they stay sharded (``distributed.no_sync``).

``optimizer_step``: GradScaler (enabled for fp16 only) unscales; the global gradient norm is clipped; the scaler
steps (skipping a step whose fp16 gradients hold inf/NaN) and updates its scale; gradients are dropped with
``zero_grad(set_to_none=True)``; the scheduler steps once per optimizer step. Nothing here reads a device value.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from minift.losses import loss_sum, target_count
from minift.precision import autocast
from minift.train import distributed

# position_ids and segment_ids: packed sequences (minift.data.pack)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "segment_ids")


def model_inputs(batch: dict, device: torch.device) -> dict:
    """The model's inputs from a host-side batch, moved to ``device``.

    An attention mask without padding is dropped here, where the batch is still on the CPU: the model then takes
    SDPA's fused path without checking the mask on the device (a host-device sync on every forward).
    """
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if "attention_mask" in inputs and bool(inputs["attention_mask"].all()):
        del inputs["attention_mask"]
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


def backward_window(model: nn.Module, window: list, kind: str, precision: str, device: torch.device,
                    scaler: torch.amp.GradScaler) -> torch.Tensor:
    """Forward and backward one accumulation window, leaving the window's mean-loss gradients in ``.grad``.

    Args:
        model: the model (under torchrun a ``DistributedDataParallel`` wrapper or an FSDP-sharded model).
        window: ``(batch, real)`` pairs; ``real=False`` marks a zero-weight stand-in batch (a process whose
            shard of the last global batch is empty still has to join DDP's all-reduce, FSDP's collectives).
        kind: the task kind (``minift.data.example.KINDS``): it chooses the loss.
        scaler: the run's GradScaler (a no-op unless fp16).
    Returns:
        The detached sum of the window's losses on this process (a device scalar; not synchronised).
    """
    world = distributed.world_size()
    # Targets in the whole window, over all processes: the denominator of the mean loss. Counted from the host-side
    # labels: no device sync on one process (under DDP one tiny all-reduce per step).
    count = distributed.all_sum(torch.tensor([float(sum(target_count(kind, b["labels"]) for b, real in window
                                                        if real))]))
    denominator = max(count.item(), 1.0) / world  # DDP / FSDP then average the gradients over the processes
    total = torch.zeros((), device=device)
    for i, (batch, real) in enumerate(window):
        inputs = model_inputs(batch, device)
        labels = batch["labels"].to(device, non_blocking=True)
        with distributed.no_sync(model, skip=i < len(window) - 1):  # DDP: all-reduce once per window
            with autocast(precision, device):
                output = model(**inputs)  # (B, num_labels) / (B, 1) / (B, T, num_labels) / (B, T, V)
            summed = loss_sum(kind, output, labels)  # outside autocast: the loss in fp32
            if not real:
                summed = summed * 0.0
            scaler.scale(summed / denominator).backward()
        total += summed.detach()
    return total


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
                   clip: float) -> None:
    """Unscale, clip the global gradient norm to ``clip`` (0: no clipping), step, update the scale, drop the
    gradients and advance the schedule by one step."""
    scaler.unscale_(optimizer)
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(optimizer)  # skipped when fp16 gradients hold inf/NaN
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # after a skipped fp16 step torch warns; the schedule still advances
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """How many updates the optimizer really made, from its own per-parameter ``step`` counts (AdamW keeps one per
    parameter; a step the GradScaler skipped does not count). Host tensors for AdamW: reading them does not sync."""
    return max((int(state["step"]) for state in optimizer.state.values() if "step" in state), default=0)


class WindowStats:
    """Running sums between two training-log lines: the loss on the device (read only when logging), whether it was
    ever non-finite, and host-side counts of targets, examples and real tokens."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.reset_counts()

    def reset_counts(self) -> None:
        self.targets, self.examples, self.tokens = 0, 0, 0

    def add(self, summed: torch.Tensor, window: list, kind: str) -> None:
        """Count one window: its loss sum (from :func:`backward_window`) and its real batches."""
        self.loss += summed
        self.nonfinite |= ~torch.isfinite(summed)
        for batch, real in window:
            if real:
                self.targets += target_count(kind, batch["labels"])
                self.examples += batch["labels"].shape[0]
                self.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0

    def loss_is_bad(self) -> bool:
        """Whether any process saw a NaN/inf loss since training started (a host sync: call it only when logging,
        evaluating or checkpointing)."""
        return bool(distributed.all_sum(self.nonfinite.float().reshape(1)).item())

    def take(self) -> tuple:
        """(mean loss per target over all processes, this process's examples, its real tokens) since the last
        call; then the sums restart."""
        sums = distributed.all_sum(torch.stack([self.loss.float(), torch.tensor(float(self.targets),
                                                                                device=self.loss.device)]))
        taken = (sums[0].item() / max(1.0, sums[1].item()), self.examples, self.tokens)
        self.loss.zero_()
        self.reset_counts()
        return taken
