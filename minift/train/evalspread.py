"""Evaluation spread over torchrun's processes: each process evaluates a contiguous share of the batches, the
predictions are gathered in order, and process 0 computes the task's metrics from all of them — the metrics of
``evaluate.evaluate`` over the whole split, N times faster.

Under FSDP a forward is a collective, so the processes' forwards must pair up although their shares differ (one
more batch, generation that stops early at EOS): ``fsdp.Lockstep`` takes care of that. With one process this is
``evaluate.evaluate`` itself.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from minift.data.example import Task
from minift.data.metrics import compute_metrics
from minift.losses import target_count
from minift.train import distributed
from minift.train.batching import shard
from minift.train.evaluate import answers, evaluate, generate_labels, predict, response_loss
from minift.train.fsdp import Lockstep


def evaluate_spread(model: nn.Module, task: Task, batches: Sequence[dict], tokenizer, eos_id: int | None,
                    precision: str, device: torch.device) -> dict:
    """The task's metrics over ``batches`` on process 0 (``{}`` on the others; every process calls it)."""
    if distributed.world_size() == 1:
        return evaluate(model, task, batches, tokenizer, eos_id, precision, device)
    mine = shard(list(batches), distributed.rank(), distributed.world_size())
    with Lockstep(model, device):
        if task.kind == "sft":  # the loss sum over this share and its target count
            count = sum(target_count("sft", b["labels"]) for b in mine)
            part = (response_loss(model, mine, precision, device)["response_loss"] * count, count) if mine else (0, 0)
        elif task.kind == "causal-lm":
            part = generate_labels(model, mine, tokenizer, task.label_words, eos_id, precision, device)
        else:
            part = predict(model, mine, task.kind, precision, device)
    parts = distributed.gather_objects(part)
    if not distributed.is_main():
        return {}
    if task.kind == "sft":  # as response_loss: the mean per target and its perplexity
        loss = sum(p[0] for p in parts) / max(1, sum(p[1] for p in parts))
        return {"response_loss": loss, "perplexity": math.exp(min(loss, 50.0))}
    return compute_metrics(task, [x for p in parts for x in p[0]], [y for p in parts for y in p[1]])


def answers_spread(model: nn.Module, prompts: Sequence[dict], tokenizer, eos_id: int | None, precision: str,
                   device: torch.device, **options) -> list:
    """``evaluate.answers`` written by process 0 (``[]`` on the others; every process calls it: under FSDP the
    others serve its forwards)."""
    with Lockstep(model, device):
        if distributed.is_main():
            return answers(model, prompts, tokenizer, eos_id, precision, device, **options)
    return []
