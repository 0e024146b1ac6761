"""Summed losses and their target counts, so that accumulated gradients equal one big batch's.

Below both ``minift.train`` and ``minift.memory`` (the estimator's measurements run the same loss). Positions
labelled ``minift.data.example.IGNORE_INDEX`` carry no loss.

The loop divides the *sum* of per-target losses of every micro-batch by the number of targets in the whole
accumulation window (all processes together). Averaging per micro-batch instead would weight a short
micro-batch's tokens more than a long one's (torchtune normalises by the token count the same way).
A target is an example (classification, regression) or a label that is not -100 (tokens, LM positions).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minift.data.example import IGNORE_INDEX, LM_KINDS


def target_count(kind: str, labels: torch.Tensor) -> int:
    """The number of loss terms a batch contributes (host tensor in, so no device sync)."""
    if kind in ("classification", "regression"):
        return int(labels.shape[0])
    if kind == "token-classification":
        return int((labels != IGNORE_INDEX).sum())
    if kind in LM_KINDS:  # causal-lm, sft
        return int((labels[:, 1:] != IGNORE_INDEX).sum())
    raise ValueError(f"unknown task kind {kind!r}")


def loss_sum(kind: str, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed loss of a batch, in fp32.

    Args:
        kind: classification | regression | token-classification | causal-lm | sft (a task kind).
        output: the model output: (B, num_labels), (B, 1), (B, T, num_labels) or (B, T, V).
        labels: (B,) class ids, (B,) floats, (B, T) tag ids or (B, T) token ids, -100 where ignored.
            Causal-LM labels are aligned with the inputs (as in transformers); the shift happens here.
    Returns:
        A scalar tensor: Σ cross-entropy (or squared error) over the batch's targets.
    """
    output = output.float()
    if kind == "classification":
        return F.cross_entropy(output, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if kind == "regression":
        return F.mse_loss(output.reshape(-1), labels.float().reshape(-1), reduction="sum")
    if kind == "token-classification":
        return F.cross_entropy(output.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    if kind in LM_KINDS:  # causal-lm, sft
        logits, targets = output[:, :-1], labels[:, 1:]  # position t predicts token t+1
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    raise ValueError(f"unknown task kind {kind!r}")
