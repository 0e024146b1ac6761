"""How a model family plugs into minift: ``Family``, ``HeadSpec``, ``KeyTransform`` and the family table.

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
from typing import Callable

import torch
from torch import nn

from minift.models.config import ModelConfig
from minift.models.errors import ConfigError, ModelLoadError

# model_type → module defining FAMILY. The only place a family is registered.
FAMILIES: dict[str, str] = {
    "bert": "minift.models.bert",
    "roberta": "minift.models.roberta",
    "gpt2": "minift.models.gpt2",
    "gpt_neo": "minift.models.gpt_neo",
    "llama": "minift.models.llama",
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
class Family:
    """Everything ``load_pretrained`` / ``save_pretrained`` need to know about one model family."""

    model_type: str  # config.json "model_type"
    prefix: str  # HF attribute the backbone lives under: "bert" | "roberta" | "transformer" | "model"
    build_backbone: Callable[[ModelConfig, str | None], nn.Module]  # (config, head_kind) → backbone
    hf_class: str  # transformers class of the bare backbone, e.g. "BertModel"
    heads: Mapping[str, HeadSpec] = field(default_factory=dict)  # head kind → spec
    skip: tuple[str, ...] = ()  # regexes of checkpoint keys deliberately ignored (e.g. r"\.position_ids$")
    optional: tuple[str, ...] = ()  # regexes of model keys freshly initialised when absent (e.g. BERT pooler)
    transforms: tuple[KeyTransform, ...] = ()  # per-key tensor transforms on load and save
    default_head: str | None = None  # head used when none is asked for (decoders: "causal-lm")
    is_decoder: bool = False

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
