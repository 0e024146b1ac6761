"""The test kit: tiny models of every family and head, the batches to run them on, and training assets.

Every tiny model is 2 layers, width 32, vocab 100 (STYLE.md 10). ``FAMILIES`` is the one table of them: per
family, the transformers config class with its keyword arguments, and the transformers class of each minift head.
A new family is one entry there; tests that loop over ``FAMILIES`` then cover it.

- ``make_tiny(root, family, head)`` → ``Tiny``: a random transformers model saved with safetensors under ``root``,
  and ``load()`` giving a minift model of it (tests use the ``tiny`` fixture of ``conftest.py``, which fills root).
- ``batch(family)``: a padded batch (right, left or mixed padding; optional labels for a head).
- ``model_config(family)`` / ``random_model(config, head)``: a minift model without transformers (memory tests).
- ``feature_rows`` / ``collate``: feature dicts and their padded batch (training-loop tests).
- ``cli_assets(root)``: a BERT folder with a WordPiece ``vocab.txt`` and a learnable CSV task (command-line runs).

conftest.py imports this module for every test, so it imports only torch and minift.models up front; transformers,
minift.data and minift.peft are imported by the functions that need them.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest
import torch

from minift.models import ModelConfig, load_pretrained

if TYPE_CHECKING:
    from minift.peft.config import Method

VOCAB = 100
CLS = 2  # the id encoder rows start with ([CLS] / <s> role); ids below 4 are kept for special tokens


def _heads(name: str, causal_lm: str | None = None) -> dict[str | None, str]:
    """transformers class per minift head for a family whose classes follow the usual names (None: bare model)."""
    heads = {None: f"{name}Model", "classification": f"{name}ForSequenceClassification",
             "regression": f"{name}ForSequenceClassification", "token-classification": f"{name}ForTokenClassification"}
    if causal_lm:
        heads["causal-lm"] = causal_lm
    return heads


@dataclass(frozen=True)
class Spec:
    """How transformers builds one tiny family."""

    config: str  # transformers config class
    kwargs: dict[str, Any]  # its arguments: 2 layers, width 32, vocab 100, pad id
    classes: dict[str | None, str]  # minift head (None: bare) → transformers model class

    @property
    def is_decoder(self) -> bool:
        return "causal-lm" in self.classes

    @property
    def pad_id(self) -> int:
        return self.kwargs["pad_token_id"]


_ENCODER = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "max_position_embeddings": 64, "type_vocab_size": 2, "pad_token_id": 0}

FAMILIES: dict[str, Spec] = {
    "bert": Spec("BertConfig", _ENCODER, _heads("Bert")),
    # RoBERTa: pad id 1, positions start at pad + 1 (so 2 more position rows), one token type, as roberta-base
    "roberta": Spec("RobertaConfig", {**_ENCODER, "max_position_embeddings": 66, "type_vocab_size": 1,
                                      "pad_token_id": 1}, _heads("Roberta")),
    "gpt2": Spec("GPT2Config", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
                                "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
                 _heads("GPT2", "GPT2LMHeadModel")),
    # one global and one local layer, with a window shorter than the batches so that it matters
    "gpt_neo": Spec("GPTNeoConfig", {"vocab_size": VOCAB, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
                                     "max_position_embeddings": 64, "attention_types": [[["global", "local"], 1]],
                                     "window_size": 4, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
                    _heads("GPTNeo", "GPTNeoForCausalLM")),
    # grouped-query attention: 4 query heads share 2 key/value heads
    "llama": Spec("LlamaConfig", {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                  "max_position_embeddings": 64, "pad_token_id": 0},
                  _heads("Llama", "LlamaForCausalLM")),
    # Qwen2: q/k/v biases, tied embeddings, and the second layer on a sliding window shorter than the batches
    "qwen2": Spec("Qwen2Config", {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                  "max_position_embeddings": 64, "pad_token_id": 0, "tie_word_embeddings": True,
                                  "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
                  _heads("Qwen2", "Qwen2ForCausalLM")),
    # Mistral: every layer on a sliding window shorter than the batches
    "mistral": Spec("MistralConfig", {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
                                      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                      "max_position_embeddings": 64, "pad_token_id": 0, "sliding_window": 4},
                    _heads("Mistral", "MistralForCausalLM")),
}
ENCODERS = tuple(f for f, spec in FAMILIES.items() if not spec.is_decoder)
DECODERS = tuple(f for f, spec in FAMILIES.items() if spec.is_decoder)
# PEFT options sized for these models (width 32); every other option is minift.peft's default
PEFT_OPTIONS = {"lora": {"r": 4}, "adapter": {"size": 8}, "bitfit": {}, "prompt": {"length": 4}}


def _transformers():
    return pytest.importorskip("transformers")


def hf_config(family: str, **overrides):
    """The transformers config of a tiny ``family`` model; ``overrides`` are transformers config arguments."""
    spec = FAMILIES[family]
    return getattr(_transformers(), spec.config)(**{**spec.kwargs, **overrides})


def hf_model(family: str, head: str | None = None, *, num_labels: int = 3, head_std: float | None = 0.5,
             model_kwargs: dict | None = None, **overrides) -> torch.nn.Module:
    """A random tiny transformers model of ``family`` with ``head`` (None: the bare model), in eval mode.

    Args:
        num_labels: outputs of a classification head (a regression head has 1 and ``problem_type="regression"``).
        head_std: the classification / token-classification head is redrawn from N(0, head_std²), biases too,
            so that it matters in comparisons (transformers' init is tiny); None keeps transformers' init.
        model_kwargs: extra arguments of the model class (e.g. ``add_pooling_layer=False``).
        overrides: transformers config arguments.
    """
    if head == "regression":
        num_labels, overrides = 1, {"problem_type": "regression", **overrides}
    config = hf_config(family, num_labels=num_labels, **overrides)
    model = getattr(_transformers(), FAMILIES[family].classes[head])(config, **(model_kwargs or {}))
    if head_std is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith(("classifier", "score")):  # transformers' names of its task heads
                    p.normal_(0, head_std)
    return model.eval()


@dataclass
class Tiny:
    """A tiny random checkpoint: the transformers model and the folder it was saved to."""

    hf: torch.nn.Module  # the transformers model (eval mode)
    folder: Path  # its safetensors folder (config.json + model.safetensors)
    head: str | None  # the minift head kind it was built for

    def load(self, **kwargs) -> torch.nn.Module:
        """A fresh minift model of the folder (eval mode); ``kwargs`` go to ``load_pretrained``."""
        return load_pretrained(self.folder, **{"head": self.head, **kwargs})

    def save(self) -> Tiny:
        """Write ``hf`` to the folder again (after a test changed its weights)."""
        self.hf.save_pretrained(self.folder, safe_serialization=True)
        return self


def make_tiny(root: Path, family: str, head: str | None = None, *, name: str | None = None,
              max_shard_size: str | None = None, seed: int | None = None, **kwargs) -> Tiny:
    """``hf_model(family, head, **kwargs)`` saved with safetensors into ``root / name`` (default family-head).

    ``max_shard_size`` (e.g. "20KB") writes a sharded checkpoint; ``seed`` draws the weights from that seed
    without disturbing the caller's random state.
    """
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = hf_model(family, head, **kwargs)
    folder = Path(root) / (name or f"{family}-{head or 'bare'}")
    model.save_pretrained(folder, safe_serialization=True, **({"max_shard_size": max_shard_size}
                                                              if max_shard_size else {}))
    return Tiny(model, folder, head)


def edit_config(folder: Path, edit: Callable[[dict], dict] | None = None, **changes) -> dict:
    """Rewrite ``folder/config.json``: ``edit(config)`` returns the new dict, ``changes`` update keys."""
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    if edit is not None:
        config = edit(config)
    config.update(changes)
    path.write_text(json.dumps(config))
    return config


def batch(family: str, B: int = 3, T: int = 10, padding: str | None = "right", *, vocab: int = VOCAB,
          head: str | None = None, num_labels: int = 3) -> dict[str, torch.Tensor]:
    """A batch for ``family``: ``input_ids`` and ``attention_mask`` (B, T), and ``labels`` when ``head`` is given.

    Row 0 is full; rows 1 and 2 (then cycling) have 3 and 5 padding positions, filled with the family's pad id:
    ``padding="right"`` pads at the end, ``"left"`` at the start (decoders), ``"mixed"`` row 1 at the end and
    row 2 at the start, None gives no padding. Ids are drawn from [4, vocab); encoder rows start with ``CLS``.
    Labels (-100 on padding): causal-lm the ids, token-classification (B, T) classes, classification (B,)
    classes, regression (B,) floats.
    """
    if padding not in ("right", "left", "mixed", None):
        raise ValueError(f"padding must be 'right', 'left', 'mixed' or None, got {padding!r}")
    spec = FAMILIES[family]
    ids = torch.randint(4, vocab, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    for row in range(B) if padding else ():
        pad = (0, 3, 5)[row % 3]
        if padding == "left" or (padding == "mixed" and row % 3 == 2):
            mask[row, :pad] = 0
        else:
            mask[row, T - pad:] = 0
    if not spec.is_decoder:
        ids[:, 0] = CLS
    ids = ids.masked_fill(mask == 0, spec.pad_id)
    out = {"input_ids": ids, "attention_mask": mask}
    if head is not None:
        out["labels"] = labels(out, head, num_labels)
    return out


def labels(batch: dict[str, torch.Tensor], head: str, num_labels: int = 3) -> torch.Tensor:
    """Random labels of a ``head`` for ``batch`` (-100 on padding for per-token heads)."""
    from minift.data.example import IGNORE_INDEX

    ids, mask = batch["input_ids"], batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
    B, T = ids.shape
    if head == "causal-lm":
        return ids.masked_fill(mask == 0, IGNORE_INDEX)
    if head == "token-classification":
        return torch.randint(0, num_labels, (B, T)).masked_fill(mask == 0, IGNORE_INDEX)
    if head == "classification":
        return torch.randint(0, num_labels, (B,))
    if head == "regression":
        return torch.rand(B)
    raise ValueError(f"no labels for head {head!r}")


# --- minift models without transformers (memory tests) ---------------------------------------------------------

def model_config(family: str, *, dropout: float = 0.0, num_labels: int = 3, **fields) -> ModelConfig:
    """The minift ``ModelConfig`` of the tiny ``family`` (read from the table as a config.json would be).

    ``dropout`` sets the hidden, attention and embedding dropouts; ``fields`` override ``ModelConfig`` fields
    (e.g. ``attention_bias=True``).
    """
    config = ModelConfig.from_hf({"model_type": family, **FAMILIES[family].kwargs})
    config = dataclasses.replace(config, hidden_dropout=dropout, attention_dropout=dropout,
                                 embedding_dropout=dropout, **fields)
    return config.with_labels(num_labels)


def random_model(config: ModelConfig, head: str | None = None, method: str | Method = "full", *,
                 checkpointing: bool = False, std: float = 0.02) -> torch.nn.Module:
    """A minift model of ``config`` with every parameter drawn from N(0, std²), ``method`` applied, in train mode.

    ``method``: a ``minift.peft.config.Method``, or a method name (then with ``PEFT_OPTIONS``).
    """
    from minift.models.load import build_model
    from minift.models.registry import get_family
    from minift.peft import apply
    from minift.peft.config import Method

    if isinstance(method, str):
        method = Method.of(method, **PEFT_OPTIONS.get(method, {}))
    if head == "regression":
        config = config.with_labels(1)
    model = build_model(config, get_family(config.model_type), head)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    if method.name != "full":
        model = apply(model, method)
    model.gradient_checkpointing = checkpointing
    return model.train()


# --- feature rows and command-line assets (training tests) ------------------------------------------------------

def feature_rows(n: int, lengths: list[int], kind: str, num_labels: int = 3, seed: int = 0) -> list[dict]:
    """``n`` single-example feature dicts with token lengths cycling through ``lengths`` and random labels.

    ``kind`` "classification": one class per row; "causal-lm": the ids, -100 on a random-length prompt.
    """
    from minift.data.example import IGNORE_INDEX

    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        t = lengths[i % len(lengths)]
        ids = torch.randint(1, VOCAB, (t,), generator=g)
        if kind == "classification":
            label = torch.randint(0, num_labels, (), generator=g)
        elif kind == "causal-lm":
            label = ids.clone()
            label[: int(torch.randint(1, t, (), generator=g))] = IGNORE_INDEX
        else:
            raise ValueError(f"feature_rows makes classification or causal-lm rows, not {kind!r}")
        rows.append({"input_ids": ids, "labels": label})
    return rows


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad feature dicts into a batch (pad id 0; per-token labels -100 on padding)."""
    from minift.data.example import IGNORE_INDEX

    T = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    per_token = rows[0]["labels"].ndim == 1
    labels = (torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long) if per_token
              else torch.stack([r["labels"] for r in rows]))
    for i, r in enumerate(rows):
        t = len(r["input_ids"])
        ids[i, :t], mask[i, :t] = r["input_ids"], 1
        if per_token:
            labels[i, :t] = r["labels"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


WORDS = [f"w{i}" for i in range(90)]


def cli_assets(root: Path, n_train: int = 96, n_test: int = 40, dropout: float = 0.1) -> tuple[Path, str]:
    """(model folder, task spec) for command-line runs under ``root``: a tiny BERT classifier (2 labels) with a
    WordPiece ``vocab.txt``, and a CSV task (train/dev/test) whose label says whether the word "w7" occurs in the
    text: learnable, so metrics move."""
    root = Path(root)
    folder = make_tiny(root, "bert", "classification", name="model", num_labels=2, head_std=None, seed=0,
                       hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout).folder
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    g = torch.Generator().manual_seed(7)
    for split, n in (("train", n_train), ("dev", n_test), ("test", n_test)):
        lines = ["text,label"]
        for _ in range(n):
            length = int(torch.randint(3, 14, (), generator=g))
            words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=g)]
            lines.append(f"{' '.join(words)},{int('w7' in words)}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder, f"file:{root / 'train.csv'},{root / 'dev.csv'},{root / 'test.csv'}"
