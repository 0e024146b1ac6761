"""``TaskModel``: a backbone plus an optional head, whose state-dict keys are the matching transformers class's.

The backbone is registered under its family's HF prefix (``bert``, ``roberta``, ``transformer``, ``model``)
and the head under its HF key (``classifier``, ``score``, ``lm_head``), so ``model.state_dict()`` of a BERT
classifier has ``bert.embeddings.word_embeddings.weight`` ... ``classifier.weight`` exactly as
``BertForSequenceClassification``. How each family pools and which heads it has is its ``Family`` (see
``registry.py``).

A backbone (any family) must provide:
- ``forward(input_ids=None, attention_mask=None, inputs_embeds=None, **kw) -> (B, T, C)`` final hidden
  states (``token_type_ids`` is passed in ``kw`` only when given); decoders also take ``position_ids``,
  ``cache`` (a ``minift.models.cache.KVCache``) and ``segment_ids`` (packed sequences), passed only when given;
- ``get_input_embeddings() -> nn.Embedding``; ``blocks`` (property → the ``nn.ModuleList`` of blocks);
- a ``gradient_checkpointing`` bool attribute honoured through ``run_block``;
- a ``pooler`` attribute when a head of the family pools with ``"pooler"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from minift.models import heads
from minift.models.cache import KVCache
from minift.models.config import ModelConfig
from minift.models.dropout import Dropout
from minift.models.registry import HEAD_KINDS, get_family


def run_block(block: nn.Module, gradient_checkpointing: bool, *args, **kwargs):
    """Call ``block(*args, **kwargs)``, recomputing it in backward when ``gradient_checkpointing`` is on
    and gradients are being recorded (``torch.utils.checkpoint``, non-reentrant)."""
    if gradient_checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)


class TaskModel(nn.Module):
    """A backbone and an optional head.

    Args:
        config: the model's ``ModelConfig``.
        backbone: the family's backbone module (e.g. ``BertModel(config)``).
        head: the head module (built by the family's ``HeadSpec.build``), or None.
        head_kind: None | "classification" | "regression" | "token-classification" | "causal-lm".

    Calling the model returns: bare encoder ``(B, T, C)``; classification ``(B, num_labels)``; regression
    ``(B, 1)``; token classification ``(B, T, num_labels)``; causal-lm or a bare decoder ``(B, T, V)`` (a bare
    decoder projects on the input embeddings).
    """

    def __init__(self, config: ModelConfig, backbone: nn.Module, head: nn.Module | None = None,
                 head_kind: str | None = None):
        super().__init__()
        if (head is None) != (head_kind is None):
            raise ValueError("pass head and head_kind together (both None for a bare backbone)")
        if head_kind is not None and head_kind not in HEAD_KINDS:
            raise ValueError(f"unknown head_kind {head_kind!r}; use one of {HEAD_KINDS} or None")
        self.config = config
        self.family = get_family(config.model_type)
        self.head_kind = head_kind
        self.head_spec = self.family.head_spec(head_kind)
        self._prefix = self.family.prefix
        self.add_module(self._prefix, backbone)
        self._head_key = self.head_spec.key if self.head_spec else None
        if head is not None:
            self.add_module(self._head_key, head)
        use_dropout = self.head_spec is not None and self.head_spec.dropout
        self.head_dropout = Dropout(heads.head_dropout(config)) if use_dropout else nn.Identity()
        self.tie_weights()

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self._prefix)

    @property
    def head(self) -> nn.Module | None:
        return getattr(self, self._head_key) if self._head_key else None

    @property
    def is_decoder(self) -> bool:
        return self.family.is_decoder

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks (``backbone.encoder.layer`` / ``backbone.h`` / ``backbone.layers``)."""
        return self.backbone.blocks

    @property
    def gradient_checkpointing(self) -> bool:
        return bool(self.backbone.gradient_checkpointing)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.backbone.gradient_checkpointing = bool(value)

    @property
    def is_tied(self) -> bool:
        """Whether the head's weight is the input embedding matrix (tied ``lm_head``)."""
        return bool(self.head_spec and self.head_spec.tied and self.config.tie_word_embeddings)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def tie_weights(self) -> None:
        """Share the input embedding with a tied head (again after ``load_state_dict(assign=True)``)."""
        if self.is_tied:
            self.head.weight = self.get_input_embeddings().weight

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, *, position_ids: torch.Tensor | None = None,
                cache: KVCache | None = None, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Run the backbone and the head.

        Args:
            input_ids: ``(B, T)`` token ids; exactly one of ``input_ids`` / ``inputs_embeds``.
            attention_mask: ``(B, T)`` 1 (keep) / 0 (pad), or None (no padding); ``(B, past + T)`` with a cache.
            token_type_ids: ``(B, T)`` segment ids (encoders), or None (all 0).
            inputs_embeds: ``(B, T, C)`` input embeddings in place of ``input_ids``.
            position_ids: decoders: ``(B, T)`` or ``(T,)`` positions, or None (past .. past + T - 1).
            cache: decoders: a ``KVCache`` of the past tokens' keys and values, which this call extends
                (``minift.models.generate`` uses it); None runs the sequence on its own.
            segment_ids: decoders: ``(B, T)`` packed examples (1, 2, ...; 0 on padding), each attending only within
                itself; give each example's ``position_ids`` (restarting at 0) with them (``minift.data.pack``).

        Returns:
            See the class docstring.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        for name, value in (("position_ids", position_ids), ("cache", cache), ("segment_ids", segment_ids)):
            if value is not None:
                if not self.is_decoder:
                    raise ValueError(f"{name} is for decoders; {self.config.model_type} is an encoder")
                extra[name] = value
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                               **extra)  # (B, T, C)
        if self.head_spec is None:
            if self.is_decoder:
                return F.linear(hidden, self.get_input_embeddings().weight)  # (B, T, V)
            return hidden
        x = heads.pool(self.head_spec.pooling, hidden, attention_mask, self.backbone)  # (B, C) or (B, T, C)
        return self.head(self.head_dropout(x))
