"""The training loop: one function, readable top to bottom (nanoGPT's ``train.py``, STYLE.md point 7).

Per optimizer step: the window's micro-batches are forwarded under autocast; each micro-batch's *summed* loss
is divided by the number of targets in the whole window (all processes), so gradient accumulation — the last,
partial window included — gives the gradients of one big batch; GradScaler (enabled for fp16 only) scales,
unscales, skips steps with inf/NaN gradients and counts them; the gradient norm is clipped; the scheduler steps
once per optimizer step; gradients are dropped with ``zero_grad(set_to_none=True)``. The host reads device
values (``.item()``) only when logging, evaluating or checkpointing.
"""
from __future__ import annotations

import math
import signal
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from minift.train.batching import BatchPlan
from minift.train.checkpoint import CheckpointLoadError, save_checkpoint
from minift.losses import loss_sum, target_count

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict, device: torch.device) -> dict:
    """The model's inputs from a host-side batch, moved to ``device``.

    An attention mask without padding is dropped here, where the batch is still on the CPU: the model then takes
    SDPA's fused path without checking the mask on the device (a host-device sync on every forward).
    """
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    if "attention_mask" in inputs and bool(inputs["attention_mask"].all()):
        del inputs["attention_mask"]
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


@dataclass
class LoopSettings:
    """What the loop needs from the run config (see ``TrainConfig`` for each field's meaning)."""

    kind: str  # task kind: classification | regression | token-classification | causal-lm
    epochs: int
    grad_accum: int
    precision: str  # fp32 | fp16 | bf16 | bf16-pure
    device: torch.device
    clip: float = 0.0
    max_steps: int = 0
    eval_every: int = 0
    eval_each_epoch: bool = True
    early_stopping: int = 0
    log_every: int = 10
    main_metric: str = "accuracy"  # higher is better (minift.data's contract)
    checkpoint_dir: str | None = None  # where resumable checkpoints go; None = no checkpoints


@dataclass
class LoopState:
    """The loop's position and bookkeeping; saved in every checkpoint (JSON)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    micro: int = 0  # micro-batches of the current epoch already consumed
    best_metric: float | None = None  # best main metric so far
    best_step: int = -1  # the step it was measured at
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    skipped_steps: int = 0  # fp16 steps skipped by the GradScaler (inf/NaN gradients)
    stopped: str = ""  # why the loop ended: "" (completed), max_steps, early_stopping, nan, interrupted
    history: list = field(default_factory=list)  # the evaluations: dicts with step, epoch and metrics


def autocast(precision: str, device: torch.device):
    """Autocast to fp16/bf16 for the mixed precisions; nothing for fp32 and bf16-pure (weights are bf16)."""
    if precision in ("fp16", "bf16"):
        return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
    return nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_sum(value: torch.Tensor) -> torch.Tensor:
    if _world() > 1:
        dist.all_reduce(value)
    return value


class _StopFlag:
    """Turns the first Ctrl-C into a request to checkpoint and stop at the next optimizer step."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self.requested = True
            signal.signal(signal.SIGINT, self.previous)  # a second Ctrl-C interrupts at once

        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: Ctrl-C stays a plain KeyboardInterrupt
            self.previous = None
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def agreed(self) -> bool:
        """True when any process was interrupted (a collective under torchrun, so all stop at the same step)."""
        if _world() == 1:
            return self.requested
        return bool(_all_sum(torch.tensor([float(self.requested)], device=_collective_device())).item())


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def backward_window(model: nn.Module, collated: list, kind: str, precision: str, device: torch.device,
                    scaler: torch.amp.GradScaler) -> torch.Tensor:
    """Forward and backward one accumulation window, leaving the window's mean-loss gradients in ``.grad``.

    Args:
        collated: ``(batch, real)`` pairs; ``real=False`` marks a zero-weight stand-in batch (a process whose
            shard of the last global batch is empty still has to join DDP's all-reduce).
    Returns:
        The detached sum of the window's losses on this process (a device scalar; not synchronised).
    """
    world = _world()
    # Targets in the whole window, over all processes: the denominator of the mean loss.
    count = torch.tensor([float(sum(target_count(kind, b["labels"]) for b, real in collated if real))])
    # Counted from the host-side labels: no device sync on one process (under DDP one tiny all-reduce per step).
    count = _all_sum(count.to(_collective_device()) if world > 1 else count)
    denominator = max(count.item(), 1.0) / world  # DDP then averages the gradients over the processes
    total = torch.zeros((), device=device)
    for i, (batch, real) in enumerate(collated):
        inputs = model_inputs(batch, device)
        labels = batch["labels"].to(device, non_blocking=True)
        last = i == len(collated) - 1
        sync = nullcontext() if last or world == 1 else model.no_sync()  # all-reduce once per window
        with sync:
            with autocast(precision, device):
                output = model(**inputs)  # (B, num_labels) / (B, 1) / (B, T, num_labels) / (B, T, V)
            summed = loss_sum(kind, output, labels)
            if not real:
                summed = summed * 0.0
            scaler.scale(summed / denominator).backward()
        total += summed.detach()
    return total


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
        plan: BatchPlan, settings: LoopSettings, evaluate: Callable[[], dict], on_best: Callable[[], None],
        log: Callable[[dict], None], state: LoopState | None = None) -> LoopState:
    """Train until the epochs or ``max_steps`` are done, early stopping triggers, the loss is NaN or Ctrl-C.

    Args:
        model: the model to train (a ``DistributedDataParallel`` wrapper under torchrun). Its forward takes
            ``input_ids, attention_mask, (token_type_ids)`` and returns the task's output tensor.
        optimizer, scheduler, scaler: built by the caller; ``scaler`` is enabled for fp16 only.
        plan: the micro-batches of each epoch for this process.
        settings: see :class:`LoopSettings`.
        evaluate: returns the validation metrics by name (may be ``{}`` on processes other than 0).
        on_best: called (on every process) when the main metric improved, to save the best weights.
        log: receives every training-log and evaluation record (dicts with ``"type"``).
        state: a resumed :class:`LoopState`; None starts fresh.
    Returns:
        The final :class:`LoopState` (``stopped`` says why it ended).
    """
    state = state or LoopState()
    device, kind, accum = settings.device, settings.kind, settings.grad_accum
    steps_per_epoch = math.ceil(len(plan) / accum)
    total_steps = steps_per_epoch * settings.epochs
    if settings.max_steps:
        total_steps = min(total_steps, settings.max_steps)
    world = _world()

    # Running sums since the last log line: device tensors, read only when logging.
    loss_total = torch.zeros((), device=device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    skipped = torch.zeros((), dtype=torch.long, device=device)
    targets, examples, tokens, last_log = 0, 0, 0, time.perf_counter()

    def run_evaluation(reason: str) -> bool:
        """Evaluate and remember the best; returns True when early stopping says stop."""
        metrics = evaluate()
        record = {"type": "eval", "step": state.step, "epoch": state.epoch, "reason": reason, **metrics}
        improved = torch.tensor([0.0])
        if metrics:
            value = metrics[settings.main_metric]
            # NaN (e.g. Pearson's r of constant predictions) never improves: stored as the best, nothing would beat it.
            if math.isfinite(value) and (state.best_metric is None or value > state.best_metric):
                improved[0] = 1.0
            state.history.append(record)
            log(record)
        if world > 1:  # process 0 evaluated; everyone must agree on "improved"
            improved = improved.to(_collective_device())
            dist.broadcast(improved, src=0)
        if improved.item():
            state.best_metric = metrics.get(settings.main_metric) if metrics else None
            state.best_step, state.bad_evals = state.step, 0
            on_best()
        else:
            state.bad_evals += 1
        return bool(settings.early_stopping) and state.bad_evals >= settings.early_stopping

    def checkpoint():
        if settings.checkpoint_dir is not None:
            save_checkpoint(settings.checkpoint_dir, unwrap(model), optimizer, scheduler,
                            scaler if scaler.is_enabled() else None, asdict(state))

    def loss_is_bad() -> bool:
        bad = _all_sum(nonfinite.float().reshape(1).to(_collective_device() if world > 1 else device))
        return bool(bad.item())

    # A resumed run's stop is decided again by this run's limits: the same limit stops at once (a finished run does
    # no extra step), a raised one trains on.
    if state.stopped in ("max_steps", "early_stopping"):
        state.stopped = ""
    if settings.max_steps and state.step >= settings.max_steps:
        state.stopped = "max_steps"
    elif settings.early_stopping and state.bad_evals >= settings.early_stopping:
        state.stopped = "early_stopping"

    model.train()
    with _StopFlag() as stop:
        while state.epoch < settings.epochs and not state.stopped:
            batches = plan.epoch(state.epoch)
            if state.micro >= len(batches):  # else the for loop below does nothing and this loop never ends
                raise CheckpointLoadError(
                    f"the resumed position (epoch {state.epoch}, micro-batch {state.micro}) is past this epoch's "
                    f"{len(batches)} micro-batches: the data, batch size or number of processes differ from the run "
                    "that wrote the checkpoint; resume with the run's own config")
            for start in range(state.micro, len(batches), accum):
                window = batches[start:start + accum]  # the last window of an epoch may be shorter
                collated = [(plan.collate(idx or [0]), bool(idx)) for idx in window]
                summed = backward_window(model, collated, kind, settings.precision, device, scaler)
                loss_total += summed
                nonfinite |= ~torch.isfinite(summed)
                for batch, real in collated:
                    if real:
                        targets += target_count(kind, batch["labels"])
                        examples += batch["labels"].shape[0]
                        tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0

                scaler.unscale_(optimizer)
                if settings.clip:
                    torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), settings.clip)
                # A skipped fp16 step is exactly a step where the scale backed off; counted on the device.
                scale_before = scaler._scale.clone() if scaler.is_enabled() else None
                scaler.step(optimizer)  # skipped when fp16 gradients hold inf/NaN
                scaler.update()
                if scale_before is not None:
                    skipped += (scaler._scale < scale_before).long().reshape(())
                optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # after a skipped fp16 step torch warns; the schedule still advances
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    scheduler.step()
                state.step += 1
                state.micro = start + len(window)
                if state.micro >= len(batches):  # the epoch is done: the position moves to the next one
                    state.epoch, state.micro = state.epoch + 1, 0

                if state.step % settings.log_every == 0 or state.step == total_steps:
                    if loss_is_bad():
                        state.stopped = "nan"
                        break
                    elapsed = time.perf_counter() - last_log
                    state.skipped_steps += int(skipped.item())
                    skipped.zero_()
                    sums = _all_sum(torch.stack([loss_total.float(), torch.tensor(float(targets), device=device)])
                                    .to(_collective_device() if world > 1 else device))
                    log({"type": "train", "step": state.step, "epoch": state.epoch, "total_steps": total_steps,
                         "loss": sums[0].item() / max(1.0, sums[1].item()), "lr": scheduler.get_last_lr()[0],
                         "samples_per_s": examples * world / elapsed, "tokens_per_s": tokens * world / elapsed,
                         "skipped_steps": state.skipped_steps})
                    loss_total.zero_()
                    targets, examples, tokens, last_log = 0, 0, 0, time.perf_counter()

                epoch_ended = state.micro == 0
                due = settings.eval_every and state.step % settings.eval_every == 0
                finishing = settings.max_steps and state.step >= settings.max_steps
                if due or (epoch_ended and settings.eval_each_epoch) or finishing:
                    if loss_is_bad():  # never evaluate or checkpoint a broken model
                        state.stopped = "nan"
                        break
                    if run_evaluation("epoch" if epoch_ended else "step"):
                        state.stopped = "early_stopping"
                    elif finishing:
                        state.stopped = "max_steps"
                    checkpoint()  # after the stop is decided, so that resuming a finished run does not train on
                if not state.stopped and stop.agreed():
                    if loss_is_bad():
                        state.stopped = "nan"
                        break
                    checkpoint()
                    state.stopped = "interrupted"
                if state.stopped or epoch_ended:
                    break
    state.skipped_steps += int(skipped.item())
    return state
