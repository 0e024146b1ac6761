"""The training loop's position and bookkeeping (saved in every checkpoint as JSON), and the run's length in
optimizer steps."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from minift.train.config import TrainConfig


@dataclass
class LoopState:
    """The loop's position and bookkeeping; saved in every checkpoint (JSON)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    micro: int = 0  # micro-batches of the current epoch already consumed
    best_metric: float | None = None  # best main metric so far (process 0)
    best_step: int = -1  # the step it was measured at
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    skipped_steps: int = 0  # fp16 steps skipped by the GradScaler (inf/NaN gradients)
    stopped: str = ""  # why the loop ended: "" (completed), max_steps, early_stopping, nan, interrupted
    history: list = field(default_factory=list)  # the evaluations: dicts with step, epoch and metrics
    log_window: list = field(default_factory=list)  # the training-log sums since the last log line (WindowStats)
    global_batch: int = 0  # examples per micro-batch over all processes (--batch-size × processes): the data order

    @classmethod
    def from_dict(cls, values: dict) -> LoopState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def total_steps(micro_batches: int, config: TrainConfig) -> int:
    """Optimizer steps of the whole run: windows of ``grad_accum`` micro-batches per epoch (a short last window
    counts), times the epochs, capped by ``max_steps``."""
    steps = -(-micro_batches // config.grad_accum) * config.epochs
    return min(steps, config.max_steps) if config.max_steps else steps
