"""How a model family plugs into minift: ``Family``, ``HeadSpec``, ``KeyTransform``, ``MemorySpec`` and the family
table.

Each family module (``bert.py``, ``roberta.py``, ``gpt2.py``, ``gpt_neo.py``, ``llama.py``) defines one
module-level ``FAMILY = Family(...)``. ``FAMILIES`` below maps ``model_type`` to that module's import path;
``get_family(model_type)`` imports it lazily (so importing minift imports no family). See ``load.py``'s
docstring for the full contract a family must meet.
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from minift.models.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from minift.models.config import ModelConfig

# model_type → module defining FAMILY. The only place a family is registered.
FAMILIES: dict[str, str] = {
    "bert": "minift.models.bert",
    "roberta": "minift.models.roberta",
    "gpt2": "minift.models.gpt2",
    "gpt_neo": "minift.models.gpt_neo",
    "llama": "minift.models.llama",
    "qwen2": "minift.models.qwen2",
    "mistral": "minift.models.mistral",
}
HEAD_KINDS = ("classification", "regression", "token-classification", "causal-lm")


@dataclass(frozen=True)
class HeadSpec:
    """One head a family supports."""

    key: str  # the HF key the head module is registered under: "classifier" | "score" | "lm_head"
    build: Callable[[ModelConfig, int], nn.Module]  # (config, num_labels) → head module (fresh, any init)
    pooling: str  # what the head reads: "pooler" | "first" | "last" | "tokens" (see heads.pool)
    hf_class: str  # transformers class written to config.json "architectures", e.g. "BertForTokenClassification"
    dropout: bool = False  # apply Dropout(heads.head_dropout(config)) to the pooled input first
    tied: bool = False  # the head's ``weight`` is the input embedding when config.tie_word_embeddings


@dataclass(frozen=True)
class KeyTransform:
    """A per-key tensor transform between HF checkpoint layout and minift's modules.

    ``pattern`` is searched (``re.search``) in full, prefixed model keys, e.g. GPT-2's
    ``r"\\.(c_attn|c_proj|c_fc)\\.weight$"`` with ``load=save=lambda w: w.t()`` for its Conv1D weights.
    ``load`` gets the checkpoint tensor and returns the module's; ``save`` does the inverse.
    """

    pattern: str
    load: Callable[[torch.Tensor], torch.Tensor]
    save: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GGUFSpec:
    """How a family's llama.cpp GGUF files map onto its HF keys (read by ``gguf.py``)."""

    arch: str  # the file's ``general.architecture`` (its metadata keys are ``<arch>.block_count`` ...)
    tensors: Mapping[str, str]  # llama.cpp tensor name ("blk.{i}.attn_q") → HF module key ("model.layers.{i}...")
    permute_qk: bool = False  # undo convert_hf_to_gguf.py's Q/K row permutation (LLaMA-architecture files)
    skip: tuple[str, ...] = ()  # regexes of GGUF tensors deliberately not loaded


@dataclass(frozen=True)
class MemorySpec:
    """How a family's forward spends activation memory, where its module tree cannot say.

    ``minift.memory`` replays a training forward on a symbolic tape (``memory/activations.py``) from this and
    from the model itself, built on the meta device: linear shapes, biases, PEFT wrapping, what trains, the head
    modules and a tied embedding are read there. Names are block-relative HF keys (below ``model.blocks[i]``);
    the sub-layers' output projections are the family's ``adapter_sites`` ("attention", "ffn"), and the layers
    ``config.attention_layers`` marks "local" attend to a sliding window (an explicit (T, T) mask).
    """

    attention: tuple[str, ...]  # the q, k, v projections in that order, or one fused qkv projection (GPT-2)
    mlp: tuple[str, ...]  # the MLP's input projections: (up,) for down(act(up(x))), (gate, up) for SwiGLU
    #                       down(act(gate(x)) * up(x))
    norm: str = "layer"  # "layer" (nn.LayerNorm) | "rms" (RMSNorm computed in fp32, as Llama's)
    post_norm: bool = False  # norm(x + sublayer(x)) (BERT); else pre-norm x + sublayer(norm(x)) and a final norm
    dropout: bool = True  # hidden_dropout on each sub-layer's output and embedding_dropout after the embeddings
    attention_fp32: bool = False  # q, k, v cast to fp32 for the attention (GPT-Neo's unscaled scores)
    positions: str = "learned"  # "learned": a position table read with one (T,) row of ids; "learned-per-row":
    #                             (B, T) ids counted from input_ids (RoBERTa); "rotary": RoPE cos/sin tables
    token_types: bool = False  # a token-type embedding is added to the input embeddings
    embedding_norm: bool = False  # LayerNorm after the embeddings
    pooler: tuple[str, ...] = ()  # the backbone's ``pooler`` on the first token (heads pooling "pooler"), as steps:
    #                               a linear's name in it, "tanh" or "dropout" (the head dropout)
    head_steps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # head kind → its module's forward
    #                               as steps, for a head that is more than one nn.Linear (RoBERTa's classifier)

    def __post_init__(self):
        if len(self.attention) not in (1, 3) or len(self.mlp) not in (1, 2):
            raise ValueError(f"MemorySpec: attention names q, k, v or one fused projection and mlp (up,) or "
                             f"(gate, up), got {self.attention} and {self.mlp}")
        if self.norm not in ("layer", "rms") or self.positions not in ("learned", "learned-per-row", "rotary"):
            raise ValueError(f"MemorySpec: unknown norm {self.norm!r} or positions {self.positions!r}")


@dataclass(frozen=True)
class Family:
    """Everything minift knows about one model family; ``peft``, ``memory``, ``data`` and ``gguf`` read it here.

    A family module defines ``FAMILY = Family(...)`` beside its layers, and ``FAMILIES`` below registers it.
    """

    model_type: str  # config.json "model_type"
    prefix: str  # HF attribute the backbone lives under: "bert" | "roberta" | "transformer" | "model"
    build_backbone: Callable[[ModelConfig, str | None], nn.Module]  # (config, head_kind) → backbone
    hf_class: str  # transformers class of the bare backbone, e.g. "BertModel"
    # --- config.json ---
    config_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # ModelConfig field → HF keys (first
    #                                       present is read; the first is written back)
    config_defaults: Mapping[str, Any] = field(default_factory=dict)  # transformers' defaults for absent keys
    read_config: Callable[[dict, dict], None] | None = None  # (HF dict, field values) → fills family-specific fields
    write_config: Callable[[ModelConfig, dict], None] | None = None  # (config, HF dict being written) → its keys
    architectures: tuple[str, ...] = ()  # HF class-name prefixes naming the family in configs without model_type
    config_markers: tuple[str, ...] = ()  # keys that together name the family when nothing else does
    # --- modules and checkpoints ---
    heads: Mapping[str, HeadSpec] = field(default_factory=dict)  # head kind → spec
    skip: tuple[str, ...] = ()  # regexes of checkpoint keys deliberately ignored (e.g. r"\.position_ids$")
    optional: tuple[str, ...] = ()  # regexes of model keys freshly initialised when absent (e.g. BERT pooler)
    transforms: tuple[KeyTransform, ...] = ()  # per-key tensor transforms on load and save
    conv1d: str | None = None  # regex of weights HF keeps in Conv1D (in, out) layout (peft's fan_in_fan_out)
    default_head: str | None = None  # head used when none is asked for (decoders: "causal-lm")
    is_decoder: bool = False
    gguf: GGUFSpec | None = None  # llama.cpp files of this architecture, if minift reads them
    # --- what other packages ask of a family ---
    lora_targets: tuple[str, ...] = ()  # default LoRA targets (peft's defaults: attention query and value)
    adapter_sites: Mapping[str, str] = field(default_factory=dict)  # "attention" / "ffn" → block-relative name of
    #                                       that sub-layer's output projection (where a bottleneck adapter goes)
    bpe_processor: str | None = None  # vocab.json + merges.txt tokenizers: "RobertaProcessing" | "ByteLevel"
    tokenizer_classes: tuple[str, ...] = ()  # tokenizer_config.json "tokenizer_class" values of this family
    memory: MemorySpec | None = None  # how its forward spends activation memory (minift.memory); None: no estimate

    def head_spec(self, head_kind: str | None) -> HeadSpec | None:
        """The spec of ``head_kind`` (None → None), or a ``ModelLoadError`` naming the supported heads."""
        if head_kind is None:
            return None
        if head_kind not in self.heads:
            supported = ", ".join(repr(k) for k in self.heads) or "none"
            raise ModelLoadError(f"head {head_kind!r} is not supported for model_type {self.model_type!r}; "
                                 f"use one of {supported} (or head=None)")
        return self.heads[head_kind]

    def transform(self, key: str, tensor: torch.Tensor, direction: str) -> torch.Tensor:
        """Apply the transforms whose pattern matches ``key`` (``direction`` is "load" or "save")."""
        for t in self.transforms:
            if re.search(t.pattern, key):
                tensor = getattr(t, direction)(tensor)
        return tensor


def get_family(model_type: str) -> Family:
    """Import and return the ``FAMILY`` of ``model_type``."""
    if model_type not in FAMILIES:
        raise ConfigError(f"unknown model_type {model_type!r}; supported: {', '.join(FAMILIES)}")
    try:
        module = importlib.import_module(FAMILIES[model_type])
    except ModuleNotFoundError as e:
        if e.name != FAMILIES[model_type]:
            raise
        raise ModelLoadError(f"model_type {model_type!r} is registered but {FAMILIES[model_type]} "
                             "is not available in this installation") from e
    return module.FAMILY


def families() -> list[Family]:
    """Every registered family, in registration order (imports them all)."""
    return [get_family(model_type) for model_type in FAMILIES]


def detect_model_type(d: dict) -> str | None:
    """The family of a config dict that has no ``model_type`` (old checkpoints, e.g. SciBERT's), or None.

    Class names are tried first for every family, then the families' marker keys, in registration order.
    """
    for fam in families():
        if fam.architectures and any(arch.startswith(fam.architectures) for arch in d.get("architectures") or ()):
            return fam.model_type
    for fam in families():
        if fam.config_markers and all(key in d for key in fam.config_markers):
            return fam.model_type
    return None


def gguf_family(arch: str) -> Family | None:
    """The family whose GGUF spec reads ``general.architecture == arch``, or None."""
    return next((fam for fam in families() if fam.gguf is not None and fam.gguf.arch == arch), None)
