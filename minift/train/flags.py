"""``python -m minift.train`` flags, YAML files and ``--resume``: from a command line to a ``TrainConfig``.

Precedence, lowest first: the dataclass defaults, the method's default learning rate, ``configs/<task>.yaml``
(or ``--config FILE``), then command-line flags. Every plain field is a flag (``batch_size`` → ``--batch-size``);
every option of a method config is a flag prefixed with the method's name, generated from the dataclass in
``minift.peft.config`` with its comment as help (``LoRAConfig.r`` → ``--lora-r``), so a new option is added there
only. Unknown keys and values of the wrong type are errors that name the key (minGPT's ``merge_from_args``, but
typed and without ``exec``).

Paths are saved absolute (``--model``, ``--data-dir`` and the files of ``--task file:...``), so that ``--resume``
works from any working directory.

``--resume RUN_DIR`` starts instead from the run's saved ``config.json`` and applies only the flags given:

- refused: flags that would change the model, the training data or its order, or the restored optimizer state
  (all but the settings below);
- ``--epochs`` / ``--max-steps`` may be raised (``RESUME_RAISABLE``);
- ``--max-length`` may change when no training example is longer than the shorter of the two lengths, so that the
  training data stays the same (checked once the data is encoded): this fixes a length too long for the model's
  positions, which only the evaluation would have hit;
- ``--batch-size`` may change when ``--batch-size`` × processes stays the same (checked against the checkpoint): the
  same data order on another number of processes (e.g. a 2-process run resumed by one process with twice the batch);
- free: what is evaluated, logged and saved, and where the run runs (``RESUME_FREE``). ``--clip`` is free too, as a
  deliberate change of the training from the resumed step on (e.g. after a NaN stop).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Collection
from pathlib import Path

import yaml

from minift.data.prompts import split_label_words, unescape
from minift.data.readers_file import FILE_KINDS
from minift.peft.config import METHODS
from minift.peft.flags import BOOL_FLAG, add_method_flags, field_comments, flag, unwrap, value_parser
from minift.precision import ALIASES as PRECISION_ALIASES
from minift.precision import AUTO, PRECISIONS
from minift.train.config import (
    BEST_TIES,
    DEFAULT_LR,
    INITS,
    METHOD_FIELDS,
    SAVE_POLICIES,
    SCHEDULES,
    SHARDS,
    TrainConfig,
    TrainConfigError,
    flat,
    merge,
    nest,
    plain_fields,
)

CHOICES = {"method": METHODS, "schedule": SCHEDULES, "precision": (AUTO, *PRECISIONS, *PRECISION_ALIASES),
           "task_kind": FILE_KINDS, "init": INITS, "save": SAVE_POLICIES, "best_tie": BEST_TIES, "shard": SHARDS}
# Fields whose flag is not (only) their name, and fields read by their own parser: a prompt's \n is a newline, and an
# empty label word is kept for minift.data to name (a plain list flag would drop it).
FLAG_NAMES = {"task_prompt": ("--prompt", "--task-prompt")}
PARSERS = {"task_prompt": unescape, "label_words": split_label_words}


def load_yaml(path) -> dict:
    """Read a YAML config file into a nested dict of known keys; unknown keys are an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise TrainConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return nest(data, str(path))


def task_yaml(task: str) -> Path | None:
    """``configs/<task>.yaml`` of a source checkout (beside the package) or of the working directory."""
    if task.startswith("file:"):
        return None
    from minift.data.tasks import ALIASES  # agnews_sup → agnews

    name = ALIASES.get(task, task)
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root / "configs" / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


# --- the parser ----------------------------------------------------------------------------------------------------

def build_parser(fields: Collection[str] | None = None, methods: bool = True, prog: str = "python -m minift.train",
                 description: str = "Fine-tune a model on a task with full fine-tuning or a PEFT method.",
                 ) -> argparse.ArgumentParser:
    """The ``python -m minift.train`` argument parser: ``--config``, one flag per plain config field, and the
    method options' flags of ``minift.peft.flags`` (``--lora-r``, ``--adapter-size``, ``--prompt-text``, ...).

    Another command takes a subset of the same flags (one vocabulary): ``fields`` names the plain config fields that
    become flags (None: all), ``methods=False`` leaves the method options out (``python -m minift.eval``).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"--precision also reads the earlier spellings {', '.join(PRECISION_ALIASES)} (aliases of "
               f"{', '.join(PRECISION_ALIASES.values())}) for one release. YAML files and run folders from earlier "
               "releases may use the flat keys lora_r, adapter_size, prompt_init, ... "
               "--resume RUN_DIR continues a run with its saved config: --epochs / --max-steps may be raised, "
               "--max-length changed when no training example is longer than the shorter length, --batch-size "
               "when --batch-size × processes stays the same (another number of processes), and "
               f"{', '.join(flag(n) for n in RESUME_FREE if n not in ('resume', 'seeds'))} changed freely; other "
               "flags are refused. A non-empty --output-dir needs --resume or --overwrite. Exit status: 2 for a bad "
               "input, 1 after a NaN loss or running out of memory, 130 / 143 / 129 after Ctrl-C / SIGTERM / SIGHUP "
               "(checkpointed; a second signal stops at once).",
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="a YAML file of config keys (default: configs/<task>.yaml if present)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error, for a bug report (also: MINIFT_DEBUG=1)")
    defaults, comments = TrainConfig(), field_comments(TrainConfig)
    declared = {f.name: f.default for f in dataclasses.fields(TrainConfig) if isinstance(f.default, str)}
    for name, annotation in plain_fields().items():
        if fields is not None and name not in fields:
            continue
        # the declared default (TrainConfig resolves --precision auto at once: the help says auto, not this box's)
        shown = f"per method, {DEFAULT_LR}" if name == "lr" else declared.get(name, getattr(defaults, name))
        help_text = f"{comments.get(name, '')} (default: {shown})".replace("%", "%%")
        if name in PARSERS:
            extra = {"type": PARSERS[name]}
        elif name in CHOICES:
            extra = {"choices": CHOICES[name]}
        elif unwrap(annotation)[0] is bool:  # ``--gradient-checkpointing`` alone is true; ``--plot false`` works
            extra = BOOL_FLAG
        else:
            extra = {"type": value_parser(annotation)}
        parser.add_argument(*FLAG_NAMES.get(name, (flag(name),)), dest=name, default=argparse.SUPPRESS,
                            help=help_text, **extra)
    if methods:
        add_method_flags(parser.add_argument_group("method options (each used by its method only)"))
    return parser


def resolve_config(argv: list | None = None) -> TrainConfig:
    """Parse command-line flags, merge them over the YAML config and the defaults, and validate.

    Args:
        argv: the flags (without the program name); None → ``sys.argv[1:]``.
    Returns:
        The validated ``TrainConfig``. Raises ``SystemExit`` (argparse) on unknown flags or unparsable
        values and ``TrainConfigError`` on invalid combinations.
    """
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config", None)
    args.pop("debug", None)  # read by the command itself (__main__)
    given = nest(args, "command line")
    if given.get("resume"):  # the run's own saved config, then what this command line says
        return resume_config(given["resume"], absolute_paths(merge(load_yaml(config_file) if config_file else {},
                                                                   given)))
    task = given.get("task", TrainConfig.task)
    yaml_path = Path(config_file) if config_file else task_yaml(task)
    values = load_yaml(yaml_path) if yaml_path is not None else {}
    return TrainConfig(**absolute_paths(merge(values, given)))


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def absolute_paths(values: dict) -> dict:
    """``values`` (nested config keys) with ``model``, ``data_dir`` and the files of a ``file:`` task made absolute,
    so that a run's saved config works from another working directory. A ``file:`` spec is split as
    ``minift.data.readers_file`` reads it: a path that exists as it is is one path, else a comma-separated list."""
    out = dict(values)
    for key in ("model", "data_dir", "tokenizer"):  # a model that is no path (a preset name) stays as it is
        if isinstance(out.get(key), str) and Path(out[key]).expanduser().exists():
            out[key] = _absolute(out[key])
    task = out.get("task")
    if isinstance(task, str) and task.startswith("file:"):
        spec = task[len("file:"):]
        parts = [spec] if Path(spec).expanduser().exists() else spec.split(",")
        out["task"] = "file:" + ",".join(_absolute(p) if p and Path(p).expanduser().exists() else p for p in parts)
    return out


# --- resuming a run ------------------------------------------------------------------------------------------------

# What a resumed run may change. Everything else is fixed — it decides the model and its trainable parameters, the
# training data and its order (with the number of processes, checked against the checkpoint), or state the
# checkpoint restores (the optimizer's hyper-parameters, the schedule) — so a new setting is fixed until it is listed
# here. Of the method configs (lora, adapter, prompt) only the run's own method's is compared.
# Limits a resumed run may raise (to train on), never lower below what the run was started with.
RESUME_RAISABLE = ("epochs", "max_steps")
# May change when the training data stays the same (the recipe checks it once the data is encoded), and --batch-size
# when --batch-size × processes stays the same (the data order depends on that; checked against the checkpoint).
RESUME_IF_SAME_DATA = ("max_length", "batch_size")
# Free: what is evaluated, logged and saved, and where the run runs; the training is the same (gradient
# checkpointing recomputes the same numbers; --shard ddp / fsdp makes the same updates, reduced in another order).
# --clip changes the training from the resumed step on, as a deliberate choice (e.g. after a NaN stop).
RESUME_FREE = ("resume", "seeds", "output_dir", "overwrite", "eval_batch_size", "eval_every", "eval_each_epoch",
               "early_stopping", "log_every", "save_every_minutes", "save_every_steps", "plot", "device",
               "gradient_checkpointing", "clip", "sample_answers", "save", "dry_run", "shard")


def run_folder(resume: str) -> Path:
    """The run folder of a ``--resume`` path (the folder itself, its checkpoints/ or a checkpoints/step-N)."""
    path = Path(resume)
    if path.name.startswith("step-"):
        return path.parent.parent
    return path.parent if path.name == "checkpoints" else path


def saved_config(resume: str) -> dict:
    """The resolved config a run folder was started with (its ``config.json``), nested, earlier keys translated."""
    path = run_folder(resume) / "config.json"
    if not path.is_file():
        raise TrainConfigError(f"--resume {resume}: {path} is missing; pass the folder of a minift run (it holds "
                               "config.json and checkpoints/)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise TrainConfigError(f"--resume {resume}: {path} is not valid JSON ({err})") from None
    return nest(data, f"--resume {resume}: {path}")


def resume_config(resume: str, overrides: dict) -> TrainConfig:
    """The config of a resumed run: its saved ``config.json`` with ``overrides`` (the flags given, nested) on top.

    ``python -m minift.train --resume RUN_DIR`` alone continues the run as it was configured; flags that would
    change the model, the training data or the restored optimizer state are refused (see ``check_resumable``).
    """
    saved = saved_config(resume)
    config = TrainConfig(**merge({**saved, "resume": resume, "output_dir": str(run_folder(resume)),
                                  "overwrite": False}, overrides))
    check_resumable(saved, config)
    return config


def _same(name: str, saved, current) -> bool:
    if name in ("model", "data_dir") and saved is not None and current is not None:  # one folder, two spellings
        return Path(saved).expanduser().resolve() == Path(current).expanduser().resolve()
    if name == "task":  # a file: task's files, spelled relative or absolute
        return absolute_paths({"task": saved}) == absolute_paths({"task": current})
    return saved == current


def _fixed(key: str, method: str) -> bool:
    section = key.partition(".")[0]
    if section in METHOD_FIELDS:
        return section == method
    return section not in (*RESUME_RAISABLE, *RESUME_IF_SAME_DATA, *RESUME_FREE)


def check_resumable(saved: dict, config: TrainConfig) -> None:
    """Refuse to resume a run whose saved config ``saved`` (nested) differs from ``config`` where it must not."""
    # Through TrainConfig, so that a saved dict and the config compare with the same defaults and normalisation.
    before = flat(TrainConfig(**{**saved, "resume": None, "seeds": None}).to_dict())
    current = flat(config.to_dict())
    changed = [f"{flag(key)} {before[key]!r} → {current[key]!r}" for key in before
               if _fixed(key, config.method) and not _same(key, before[key], current[key])]
    limit = {"epochs": lambda v: v, "max_steps": lambda v: v or float("inf")}  # max_steps 0 = no limit
    changed += [f"{flag(name)} {before[name]!r} → {current[name]!r} (may only be raised)" for name in RESUME_RAISABLE
                if limit[name](current[name]) < limit[name](before[name])]
    if changed:
        raise TrainConfigError(f"--resume {config.resume}: the run was started with other settings "
                               f"({'; '.join(changed)}). Leave these flags out to continue it as it was, or start a "
                               "new run")


def same_run_config(saved: dict, config: TrainConfig) -> bool:
    """True when a resumed run's config is its saved one (where it was resumed from is not part of it)."""
    ignored = ("resume", "output_dir", "seeds", "overwrite")
    before = TrainConfig(**{**saved, "resume": None, "seeds": None}).to_dict()
    return {k: v for k, v in before.items() if k not in ignored} == {k: v for k, v in config.to_dict().items()
                                                                      if k not in ignored}
