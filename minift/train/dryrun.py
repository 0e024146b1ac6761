"""``--dry-run``: a run that sets up and counts, and trains and evaluates nothing.

It loads the task (for its kind and labels: the head), builds the model as a run builds it (``--init random`` or the
checkpoint, the task's head, the method applied) — with ``--init random`` on the meta device (shapes only: the
counts of a RoBERTa-large in seconds, no memory), else loaded on the CPU (which also checks the checkpoint) — and
writes ``config.json`` and a ``summary.json`` with
the parameter counts (``trainable_params``, ``all_params``, ``trainable_percent``) and ``stopped: "dry_run"``. No
data is encoded and no tokenizer is needed (unless the method needs one: a prompt initialised from text). It
answers "how many parameters does this train" for a model too large to train here (the reports' RoBERTa-large),
and a sweep over it gives the parameter table of a grid.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from minift.data.errors import DataError
from minift.train import runfolder
from minift.train.build import TrainSetupError, build_model, build_task, load_run_tokenizer, resolve_model_path
from minift.train.config import TrainConfig


def param_counts(model: nn.Module) -> dict:
    """The summary's counts: trainable and all parameters (tied ones once) and the trainable share in percent."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"trainable_params": trainable, "all_params": total, "trainable_percent": 100 * trainable / total}


def dry_run(config: TrainConfig) -> dict:
    """Set up ``config``'s task and model, count, write ``config.json`` and ``summary.json``; return the summary."""
    started = time.time()
    folder = runfolder.claim(config)
    try:
        task = build_task(config)
        path = resolve_model_path(config)
        try:
            tokenizer = load_run_tokenizer(config, path, task)
        except (DataError, TrainSetupError):  # counting needs none; a prompt initialised from text says so below
            tokenizer = None
        if tokenizer is None and config.method == "prompt" and config.prompt.init == "text":
            raise TrainSetupError("--dry-run with --prompt-init text needs the tokenizer that tokenises the text: "
                                  "pass --tokenizer PATH or a --model folder holding the tokenizer files")
        device = torch.device("meta" if config.init == "random" else "cpu")
        model = build_model(config, task, path, tokenizer, device)
        out = folder.open(config, None, 0)
        summary = {"task": task.name, "method": config.method, "seed": config.seed, "model": str(path),
                   "main_metric": task.main_metric, "stopped": "dry_run", "steps": 0, **param_counts(model),
                   "init": config.init, "output_dir": str(out), "wall_time_s": round(time.time() - started, 1)}
        runfolder.write_summary(out, summary)
    except BaseException:
        folder.release(failed=True)
        raise
    folder.release(failed=False)
    return summary
