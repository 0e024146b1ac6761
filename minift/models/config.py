"""``ModelConfig``: one typed config for every family, normalised from a Hugging Face ``config.json``.

``ModelConfig.from_hf(d)`` reads the config dict of a BERT, RoBERTa, GPT-2, GPT-Neo or Llama checkpoint as
written by transformers 4.x or 5.x (5.x writes ``rope_parameters`` where 4.x wrote ``rope_theta`` /
``rope_scaling``; 5.x writes ``dtype`` where 4.x wrote ``torch_dtype``). ``to_hf()`` writes it back as a dict
transformers loads: the original dict (``raw``) updated with the normalised fields under the family's keys.

Family-specific names and defaults are the family's (``Family.config_keys``: for each normalised field, the HF
keys to read, first present wins, the first one is also the key written back; ``Family.config_defaults``;
``Family.read_config`` / ``write_config`` for what is more than a rename, e.g. GPT-Neo's layer pattern or RoPE).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from minift.models.errors import ConfigError
from minift.models.registry import FAMILIES, detect_model_type, get_family

# Keys every family shares (same name in the HF dict and here).
_COMMON = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings",
           "initializer_range", "classifier_dropout", "problem_type", "architectures")


@dataclass
class ModelConfig:
    """The architecture of one checkpoint, in family-independent names (see ``docs/ARCHITECTURE.md``)."""

    model_type: str  # a registered family (minift.models.registry.FAMILIES)
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
    window_size: int | None = None  # local / sliding-window attention span (GPT-Neo local layers, Mistral)
    attention_bias: bool = False  # biases on the attention projections (Llama: q/k/v/o)
    mlp_bias: bool = False  # biases on the MLP projections (Llama: gate/up/down)
    num_labels: int = 2  # outputs of a classification head
    id2label: dict[int, str] = field(default_factory=dict)
    label2id: dict[str, int] = field(default_factory=dict)
    problem_type: str | None = None  # HF's "regression" | "single_label_classification" | ...
    architectures: list[str] | None = None  # HF class names, e.g. ["BertForSequenceClassification"]
    raw: dict = field(default_factory=dict, repr=False)  # the original config dict, untouched

    def __post_init__(self):
        if self.model_type not in FAMILIES:
            raise ConfigError(f"unknown model_type {self.model_type!r}; supported: {', '.join(FAMILIES)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name} must be a positive integer, got {value!r}")
        if not self.head_dim and self.hidden_size % self.num_heads:  # an explicit head_dim may differ from C / nh
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        self.num_kv_heads = self.num_kv_heads or self.num_heads
        self.head_dim = self.head_dim or self.hidden_size // self.num_heads
        self.intermediate_size = self.intermediate_size or 4 * self.hidden_size
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
        return get_family(self.model_type).is_decoder

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
        family = get_family(model_type)
        keys, values = family.config_keys, dict(family.config_defaults)
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
        if family.read_config is not None:
            family.read_config(d, values)
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
        family = get_family(self.model_type)
        for name, hf_keys in family.config_keys.items():
            if hf_keys[0] not in written:  # BERT's hidden_dropout_prob holds hidden_ and embedding_dropout: first wins
                d[hf_keys[0]] = getattr(self, name)
                written.add(hf_keys[0])
        for key in _COMMON:
            d[key] = getattr(self, key)
        d["id2label"] = {str(i): name for i, name in self.id2label.items()}
        d["label2id"] = dict(self.label2id)
        d.pop("num_labels", None)  # id2label is the source of truth; a stale num_labels would contradict it
        if family.write_config is not None:
            family.write_config(self, d)
        return d


def _model_type(d: dict) -> str:
    model_type = d.get("model_type")
    if model_type is None:  # old configs (e.g. SciBERT's) have none: infer it from the architectures or keys
        model_type = detect_model_type(d)
        if model_type is None:
            raise ConfigError("config has no 'model_type' and it cannot be inferred; add \"model_type\": \"bert\" "
                              f"(or one of {', '.join(FAMILIES)}) to config.json")
    if model_type not in FAMILIES:
        raise ConfigError(f"unknown model_type {model_type!r}; supported: {', '.join(FAMILIES)}")
    return model_type
