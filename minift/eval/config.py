"""``python -m minift.eval`` flags: ``python -m minift.train``'s own, less those that only training reads.

The parser is ``minift.train.flags.build_parser`` limited to :func:`eval_fields` (one vocabulary: ``--task``,
``--model``, ``--max-length``, ``--precision``, ``--eval-batch-size``, the ``file:`` task columns, ...), plus
``--adapter``. Values come, lowest first, from ``TrainConfig``'s defaults, ``configs/<task>.yaml`` (or ``--config``),
the evaluated run's saved config (``--adapter RUN_DIR``: its model, task and settings, so that ``python -m minift.eval
--adapter RUN_DIR`` alone tests the run as training did), then the command line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from minift.eval.cli import UsageError, add_debug_flag
from minift.eval.trained import Trained, build_values, find_trained
from minift.train.config import METHOD_FIELDS, TrainConfig, merge, nest, plain_fields
from minift.train.flags import build_parser as train_parser
from minift.train.flags import load_yaml, task_yaml

# TrainConfig fields only training reads (an evaluation takes the method, its options and a 4-bit base from the
# evaluated run: --adapter).
TRAINING_ONLY = frozenset({
    "method", "resume", "seeds", "overwrite", "epochs", "max_steps", "batch_size", "grad_accum", "group_by_length",
    "lr", "weight_decay", "betas", "eps", "schedule", "warmup", "clip", "gradient_checkpointing", "eval_every",
    "eval_each_epoch", "early_stopping", "log_every", "save_every_minutes", "save_every_steps", "train_head", "plot",
    "packing", "sample_answers", "best_tie", "save", "dry_run", "quantize", "double_quant",
})
# What an evaluation on another task than the run's still takes from the run (the rest describes the run's task).
RUN_SETTINGS = ("model", "data_dir", "max_length", "precision", "eval_batch_size", "seed", "device", "val_fraction")


def eval_fields() -> list[str]:
    """The TrainConfig fields an evaluation reads: every plain field but :data:`TRAINING_ONLY`."""
    return [name for name in plain_fields() if name not in TRAINING_ONLY]


def build_parser() -> argparse.ArgumentParser:
    parser = train_parser(fields=eval_fields(), methods=False, prog="python -m minift.eval",
                          description="Evaluate a model on a task's test split without training: the base model "
                                      "(before tuning), or a run's weights (--adapter).")
    parser.add_argument("--adapter", help="what a run trained: RUN_DIR or RUN_DIR/best (a PEFT folder written by "
                                          "minift.peft.save_trainable, or a full fine-tuning run's HF folder); the "
                                          "run's saved config gives the defaults of --model, --task, ...")
    add_debug_flag(parser)
    return parser


def _keep(values: dict) -> dict:
    fields = set(eval_fields())
    return {key: value for key, value in values.items() if key in fields}


def resolve_eval_config(argv: list | None = None) -> tuple[TrainConfig, Trained | None]:
    """The evaluation's ``TrainConfig`` (method ``full``: the model as loaded; with ``--adapter``, the weights' own
    method and the run's 4-bit base, see ``trained.build_values``) and the weights to load, if any.

    Raises ``SystemExit`` (argparse) on unknown flags, ``TrainConfigError`` / ``TrainedError`` / ``UsageError``."""
    args = vars(build_parser().parse_args(argv))
    adapter, config_file = args.pop("adapter", None), args.pop("config", None)
    args.pop("debug", None)
    given = nest(args, "command line")
    trained = find_trained(adapter) if adapter else None
    run = _keep(trained.config) if trained is not None and trained.config else {}
    run.pop("output_dir", None)  # the run's own folder: an evaluation writes to a new one
    if "task" in given and run.get("task") not in (None, given["task"]):
        run = {key: value for key, value in run.items() if key in RUN_SETTINGS}
    task = given.get("task", run.get("task"))
    if task is None:
        raise UsageError("--task is required (or --adapter RUN_DIR: the run's task is evaluated)")
    yaml_path = Path(config_file) if config_file else task_yaml(task)
    values = merge(merge(_keep(load_yaml(yaml_path)) if yaml_path is not None else {}, run), given)
    values = {key: value for key, value in values.items() if key not in METHOD_FIELDS}
    if trained is not None and trained.kind == "full" and values.get("model") is None and trained.run is None:
        values["model"], trained = str(trained.path), None  # a full fine-tuning folder on its own is the model
    values.update(build_values(trained) if trained is not None else {"method": "full"})
    return TrainConfig(**{**values, "task": task, "plot": False}), trained
