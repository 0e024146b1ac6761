"""Evaluate a model on a task's test split without training, and write the result as a run does.

The pieces are the training engine's: ``minift.train.build.build`` (task, tokenizer, model, encoded splits — the
method is the evaluated weights' own, or ``full`` for the model as loaded), :func:`minift.eval.trained.load_trained`
(a run's weights into it),
``minift.train.batching.eval_batches`` and ``minift.train.evaluate.evaluate`` (generated labels for causal-LM
tasks). The summary has the keys of a training run's ``summary.json`` (``steps`` 0, no validation, ``stopped``
``"evaluated"``), plus ``adapter`` (the weights evaluated, or None) and ``note`` (what the numbers mean).

Before tuning: an encoder's task head is freshly initialised (seeded by ``--seed``), so its numbers are chance level
and say nothing about the model; a decoder on a causal-LM task generates its labels with the head it was
pretrained with, which is the meaningful "before" number.
"""
from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

from torch import nn

from minift.eval.cli import UsageError
from minift.eval.config import eval_fields
from minift.eval.trained import Trained, load_trained
from minift.train.batching import eval_batches
from minift.train.build import build, pick_device, seed_everything
from minift.train.config import TrainConfig
from minift.train.dryrun import param_counts
from minift.train.evaluate import evaluate
from minift.train.runfolder import CONFIG_JSON, create_exclusive, task_stem, write_summary


def new_folder(config: TrainConfig, label: str) -> tuple[Path, bool]:
    """(the output folder, whether this call created it): ``--output-dir`` when it is new or empty, else a new
    ``runs/eval-<task>-<label>-<timestamp>[-N]`` created exclusively. An existing folder is never written into."""
    if config.output_dir:
        path = Path(config.output_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"--output-dir {path} already exists and is not empty: an evaluation never overwrites "
                             "a folder; choose a new --output-dir")
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        return path, created
    base = Path("runs") / f"eval-{task_stem(config.task)}-{label}-{datetime.now():%Y%m%d-%H%M%S}"
    made = create_exclusive(base, 1000)
    if made is not None:
        return made, True
    raise UsageError(f"{base.parent} holds too many folders named {base.name}: pass --output-dir")


def _head_is_fresh(model: nn.Module) -> bool:
    spec = getattr(model, "head_spec", None)
    return spec is not None and any(key.startswith(spec.key + ".") for key in getattr(model, "fresh_keys", ()))


def _note(trained: Trained | None, fresh_head: bool, kind: str, seed: int) -> str | None:
    """What the numbers mean when they are not a trained model's (None: they are)."""
    if trained is not None:
        return None
    if fresh_head:
        return (f"before tuning: the {kind} head is freshly initialised (seed {seed}), so these are chance-level "
                "numbers, not the model's ability")
    return "before tuning: the base model as loaded"


def evaluate_run(config: TrainConfig, trained: Trained | None = None, say: Callable[[str], None] | None = None) -> dict:
    """Test ``config``'s model (plus ``trained``, if given) on the task's test split; write ``summary.json`` and
    ``config.json`` to a new folder; return the summary.

    Args:
        config: from :func:`minift.eval.config.resolve_eval_config` (the weights' method, applied at build).
        trained: a run's weights, loaded onto the freshly built model.
        say: shown a line before the (possibly long) evaluation starts.
    """
    started = time.time()
    label = trained.method if trained is not None else "base"
    out, created = new_folder(config, label)
    try:
        device = pick_device(config.device)
        seed_everything(config.seed)  # the fresh head of an untrained encoder is drawn from it
        built = build(config, device)  # with the weights' own method (its parameters counted as the run's)
        model = built.model
        fresh_head = trained is None and _head_is_fresh(model)
        if trained is None:  # the model as loaded: nothing trained
            for p in model.parameters():
                p.requires_grad_(False)
        else:
            model = load_trained(model, trained).to(device)
        batches = eval_batches(built.data.test, built.data.collate, config.eval_batch_size)
        if say is not None:
            how = "generating labels for" if built.task.kind == "causal-lm" else "scoring"
            say(f"{how} {len(built.data.test)} test examples of {built.task.name} on {device} ...")
        metrics = evaluate(model, built.task, batches, built.tokenizer, built.data.special.eos, config.precision,
                           device)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    summary = {
        "task": built.task.name, "method": label, "seed": config.seed, "model": str(built.model_path),
        "adapter": str(trained.path) if trained is not None else None, "main_metric": built.task.main_metric,
        "validation": None, "best_validation": None, "best_step": -1, "steps": 0, "skipped_steps": 0,
        "stopped": "evaluated", "train_examples": 0, "test_examples": len(built.data.test),
        **param_counts(model), "init": config.init, "output_dir": str(out),
        "note": _note(trained, fresh_head, built.task.kind, config.seed),
        "test": metrics, **metrics, "wall_time_s": round(time.time() - started, 1),
    }
    settings = {name: getattr(config, name) for name in eval_fields()}
    (out / CONFIG_JSON).write_text(json.dumps({**settings, "adapter": summary["adapter"]}, indent=2) + "\n")
    write_summary(out, summary)
    return summary
