"""``ModelConfig``: one typed config for every family, normalised from a Hugging Face ``config.json``.

``ModelConfig.from_hf(d)`` reads the config dict of a BERT, RoBERTa, GPT-2, GPT-Neo or Llama checkpoint as
written by transformers 4.x or 5.x (5.x writes ``rope_parameters`` where 4.x wrote ``rope_theta`` /
``rope_scaling``; 5.x writes ``dtype`` where 4.x wrote ``torch_dtype``). ``to_hf()`` writes it back as a dict
transformers loads: the original dict (``raw``) updated with the normalised fields under the family's keys.

Family-specific names are in ``_KEYS``: for each normalised field, the HF keys to read (first present wins;
the first one is also the key written back).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from minift.models.errors import ConfigError

_BERT_KEYS = {
    "hidden_size": ("hidden_size",),
    "num_layers": ("num_hidden_layers",),
    "num_heads": ("num_attention_heads",),
    "intermediate_size": ("intermediate_size",),
    "max_position_embeddings": ("max_position_embeddings",),
    "layer_norm_eps": ("layer_norm_eps",),
    "hidden_act": ("hidden_act",),
    "type_vocab_size": ("type_vocab_size",),
    "hidden_dropout": ("hidden_dropout_prob",),
    "attention_dropout": ("attention_probs_dropout_prob",),
    "embedding_dropout": ("hidden_dropout_prob",),
}
_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "bert": _BERT_KEYS,
    "roberta": _BERT_KEYS,
    "gpt2": {
        "hidden_size": ("n_embd",),
        "num_layers": ("n_layer",),
        "num_heads": ("n_head",),
        "intermediate_size": ("n_inner",),
        "max_position_embeddings": ("n_positions", "n_ctx"),
        "layer_norm_eps": ("layer_norm_epsilon",),
        "hidden_act": ("activation_function",),
        "hidden_dropout": ("resid_pdrop",),
        "attention_dropout": ("attn_pdrop",),
        "embedding_dropout": ("embd_pdrop",),
    },
    "gpt_neo": {
        "hidden_size": ("hidden_size",),
        "num_layers": ("num_layers",),
        "num_heads": ("num_heads",),
        "intermediate_size": ("intermediate_size",),
        "max_position_embeddings": ("max_position_embeddings",),
        "layer_norm_eps": ("layer_norm_epsilon",),
        "hidden_act": ("activation_function",),
        "hidden_dropout": ("resid_dropout",),
        "attention_dropout": ("attention_dropout",),
        "embedding_dropout": ("embed_dropout",),
        "window_size": ("window_size",),
    },
    "llama": {
        "hidden_size": ("hidden_size",),
        "num_layers": ("num_hidden_layers",),
        "num_heads": ("num_attention_heads",),
        "num_kv_heads": ("num_key_value_heads",),
        "head_dim": ("head_dim",),
        "intermediate_size": ("intermediate_size",),
        "max_position_embeddings": ("max_position_embeddings",),
        "layer_norm_eps": ("rms_norm_eps",),
        "hidden_act": ("hidden_act",),
        "attention_dropout": ("attention_dropout",),
        "attention_bias": ("attention_bias",),
        "mlp_bias": ("mlp_bias",),
    },
}
# Keys every family shares (same name in the HF dict and here).
_COMMON = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings",
           "initializer_range", "classifier_dropout", "problem_type", "architectures")
# transformers' defaults where a config.json leaves a key out (PretrainedConfig / the family config class).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "type_vocab_size": 2, "max_position_embeddings": 512,
                 "hidden_dropout": 0.1, "attention_dropout": 0.1, "embedding_dropout": 0.1, "pad_token_id": 0},
    "roberta": {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "type_vocab_size": 2, "max_position_embeddings": 512,
                    "hidden_dropout": 0.1, "attention_dropout": 0.1, "embedding_dropout": 0.1, "pad_token_id": 1},
    "gpt2": {"hidden_act": "gelu_new", "layer_norm_eps": 1e-5, "max_position_embeddings": 1024, "hidden_dropout": 0.1,
                 "attention_dropout": 0.1, "embedding_dropout": 0.1, "type_vocab_size": 0},
    "gpt_neo": {"hidden_act": "gelu_new", "layer_norm_eps": 1e-5, "max_position_embeddings": 2048, "window_size": 256,
                    "type_vocab_size": 0, "classifier_dropout": 0.1},
    "llama": {"hidden_act": "silu", "layer_norm_eps": 1e-6, "max_position_embeddings": 2048, "type_vocab_size": 0,
                  "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False},
}
SUPPORTED_MODEL_TYPES = tuple(_KEYS)


@dataclass
class ModelConfig:
    """The architecture of one checkpoint, in family-independent names (see ``docs/ARCHITECTURE.md``)."""

    model_type: str  # "bert" | "roberta" | "gpt2" | "gpt_neo" | "llama"
    vocab_size: int  # rows of the word-embedding matrix
    hidden_size: int  # C, the residual-stream width
    num_layers: int  # transformer blocks
    num_heads: int  # query heads
    num_kv_heads: int = 0  # key/value heads (grouped-query attention); 0 → num_heads
    head_dim: int = 0  # width of one head; 0 → hidden_size // num_heads
    intermediate_size: int = 0  # MLP width; 0 → 4 * hidden_size
    max_position_embeddings: int = 512  # longest sequence the position table / RoPE is meant for
    layer_norm_eps: float = 1e-12  # LayerNorm / RMSNorm epsilon
    hidden_act: str = "gelu"  # MLP activation, HF name ("gelu", "gelu_new", "silu", ...)
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None  # Llama-3 configs list several
    type_vocab_size: int = 0  # token-type (segment) embeddings; 0 for decoders
    hidden_dropout: float = 0.0  # dropout on residual branches
    attention_dropout: float = 0.0  # dropout on attention probabilities
    embedding_dropout: float = 0.0  # dropout after the embeddings
    classifier_dropout: float | None = None  # dropout before a head; None → hidden_dropout (as HF)
    initializer_range: float = 0.02  # std of freshly initialised weights (heads)
    rope_theta: float = 10000.0  # RoPE base (Llama)
    rope_scaling: dict | None = None  # RoPE scaling without rope_theta, e.g. {"rope_type": "linear", ...}
    tie_word_embeddings: bool = True  # lm_head shares the input embedding matrix
    attention_layers: list[str] | None = None  # GPT-Neo: per layer "global" | "local"
    window_size: int | None = None  # GPT-Neo local-attention window
    attention_bias: bool = False  # Llama q/k/v/o biases
    mlp_bias: bool = False  # Llama gate/up/down biases
    num_labels: int = 2  # outputs of a classification head
    id2label: dict[int, str] = field(default_factory=dict)
    label2id: dict[str, int] = field(default_factory=dict)
    problem_type: str | None = None  # HF's "regression" | "single_label_classification" | ...
    architectures: list[str] | None = None  # HF class names, e.g. ["BertForSequenceClassification"]
    raw: dict = field(default_factory=dict, repr=False)  # the original config dict, untouched

    def __post_init__(self):
        if self.model_type not in _KEYS:
            raise ConfigError(f"unknown model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name} must be a positive integer, got {value!r}")
        self.num_kv_heads = self.num_kv_heads or self.num_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_heads
        self.intermediate_size = self.intermediate_size or 4 * self.hidden_size
        if self.model_type != "llama" and self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        layers = self.attention_layers
        if layers is not None and (len(layers) != self.num_layers or set(layers) - {"global", "local"}):
            raise ConfigError(f"attention_layers must list 'global'/'local' for each of the {self.num_layers} "
                              f"layers, got {layers!r}")
        if not self.id2label:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        self.num_labels = len(self.id2label)
        if not self.label2id:
            self.label2id = {name: i for i, name in self.id2label.items()}

    @property
    def is_decoder(self) -> bool:
        return self.model_type in ("gpt2", "gpt_neo", "llama")

    def with_labels(self, num_labels: int) -> ModelConfig:
        """Return a copy whose label maps have ``num_labels`` entries (kept when the count already matches)."""
        if num_labels <= 0:
            raise ConfigError(f"num_labels must be a positive integer, got {num_labels!r}")
        new = copy.copy(self)
        if num_labels != self.num_labels:
            new.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            new.label2id = {name: i for i, name in new.id2label.items()}
            new.num_labels = num_labels
        return new

    @classmethod
    def from_hf(cls, d: dict) -> ModelConfig:
        """Normalise a Hugging Face config dict (transformers 4.x or 5.x form).

        Raises:
            ConfigError: unknown or missing ``model_type``, or a required key missing, named in the message.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object (dict), got {type(d).__name__}")
        model_type = _model_type(d)
        keys, values = _KEYS[model_type], dict(_DEFAULTS[model_type])
        for name, hf_keys in keys.items():
            for key in hf_keys:
                if d.get(key) is not None:
                    values[name] = d[key]
                    break
        for key in _COMMON:
            if d.get(key) is not None:
                values[key] = d[key]
        missing = [keys[n][0] for n in ("hidden_size", "num_layers", "num_heads") if n not in values]
        missing += ["vocab_size"] if "vocab_size" not in values else []
        if missing:
            raise ConfigError(f"{model_type} config lacks required key(s) {missing}; is this a complete config.json?")
        if model_type == "gpt_neo":
            values["attention_layers"] = _gpt_neo_layers(d)
        if model_type == "llama":
            values["rope_theta"], values["rope_scaling"] = _rope(d)
        if model_type in ("bert", "roberta") and d.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"position_embedding_type {d['position_embedding_type']!r} is not supported "
                              "(only 'absolute')")
        if d.get("id2label"):
            values["id2label"] = {int(k): str(v) for k, v in d["id2label"].items()}
            if d.get("label2id"):
                values["label2id"] = {str(k): int(v) for k, v in d["label2id"].items()}
        elif d.get("num_labels"):
            values["num_labels"] = int(d["num_labels"])
        return cls(model_type=model_type, raw=copy.deepcopy(d), **values)

    def to_hf(self) -> dict:
        """A config dict transformers loads: ``raw`` updated with the normalised fields under HF key names."""
        d = copy.deepcopy(self.raw)
        d["model_type"] = self.model_type
        written = set()
        for name, hf_keys in _KEYS[self.model_type].items():
            if hf_keys[0] not in written:  # BERT's hidden_dropout_prob holds hidden_ and embedding_dropout: first wins
                d[hf_keys[0]] = getattr(self, name)
                written.add(hf_keys[0])
        for key in _COMMON:
            d[key] = getattr(self, key)
        d["id2label"] = {str(i): name for i, name in self.id2label.items()}
        d["label2id"] = dict(self.label2id)
        d.pop("num_labels", None)  # id2label is the source of truth; a stale num_labels would contradict it
        if self.model_type == "gpt_neo":
            d["attention_types"] = [[[kind], 1] for kind in self.attention_layers]
            d["attention_layers"] = list(self.attention_layers)
        if self.model_type == "llama":
            if "rope_parameters" in d:  # 5.x form
                scaling = self.rope_scaling or {}
                d["rope_parameters"] = {"rope_type": "default", **scaling, "rope_theta": self.rope_theta}
            else:  # 4.x form, which 5.x also reads
                d["rope_theta"], d["rope_scaling"] = self.rope_theta, self.rope_scaling
        return d


def _model_type(d: dict) -> str:
    model_type = d.get("model_type")
    if model_type is None:  # old configs (e.g. SciBERT's) have none: infer it from the architectures or keys
        for arch in d.get("architectures") or ():
            for name, prefix in (("roberta", "Roberta"), ("gpt_neo", "GPTNeo"), ("gpt2", "GPT2"),
                                 ("llama", "Llama"), ("bert", "Bert")):
                if arch.startswith(prefix):
                    return name
        if "n_embd" in d:
            return "gpt2"
        if "type_vocab_size" in d and "num_hidden_layers" in d:
            return "bert"
        raise ConfigError("config has no 'model_type' and it cannot be inferred; add \"model_type\": \"bert\" "
                          f"(or one of {', '.join(SUPPORTED_MODEL_TYPES)}) to config.json")
    if model_type not in _KEYS:
        raise ConfigError(f"unknown model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return model_type


def _gpt_neo_layers(d: dict) -> list[str]:
    # transformers sets attention_layers from attention_types, then overwrites it with a saved attention_layers
    if d.get("attention_layers"):
        return list(d["attention_layers"])
    if d.get("attention_types"):  # [[["global", "local"], 12]] → repeat the pattern 12 times
        return [kind for pattern, repeat in d["attention_types"] for _ in range(repeat) for kind in pattern]
    return ["global"] * d["num_layers"]


def _rope(d: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from 5.x ``rope_parameters`` or 4.x ``rope_theta`` + ``rope_scaling``."""
    params = dict(d.get("rope_parameters") or {})
    if not params and d.get("rope_scaling"):
        params = dict(d["rope_scaling"])
    theta = float(params.pop("rope_theta", d.get("rope_theta") or 10000.0))
    if "type" in params:  # 4.x wrote "type", later "rope_type"
        params["rope_type"] = params.pop("type")
    if params.get("rope_type", "default") == "default":
        params.pop("rope_type", None)
    return theta, (params or None)
