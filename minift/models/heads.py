"""Task heads as transformers builds them, and the pooling that feeds them.

The head modules are registered on ``TaskModel`` under their HF key (``classifier``, ``score``, ``lm_head``),
so their parameters have HF's names:

- BERT sequence classification / regression: ``classifier`` = ``nn.Linear(C, num_labels)`` on the pooler
  output (pooler = ``bert.pooler.dense`` + tanh over the first token, in the backbone), after dropout.
- RoBERTa sequence classification / regression: ``classifier`` = ``RobertaClassificationHead``
  (``dense`` + tanh + ``out_proj`` on the first token, dropout before each).
- Token classification (both encoders): ``classifier`` = ``nn.Linear(C, num_labels)`` on every token, after
  dropout.
- Decoders: ``score`` = ``nn.Linear(C, num_labels, bias=False)`` on the last real token; ``lm_head`` =
  ``nn.Linear(C, V, bias=False)``, tied to the input embeddings when ``tie_word_embeddings``.

Pooling modes (``HeadSpec.pooling`` in ``registry.py``): ``"pooler"`` (the backbone's pooler),
``"first"`` (first token), ``"last"`` (last token whose attention_mask is 1), ``"tokens"`` (no pooling).
"""
from __future__ import annotations

import torch
from torch import nn

from minift.models.config import ModelConfig
from minift.models.dropout import Dropout


class RobertaClassificationHead(nn.Module):
    """RoBERTa's sentence head: dropout → dense → tanh → dropout → out_proj, on a pooled ``(B, C)`` vector."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` → ``(B, num_labels)``."""
        x = torch.tanh(self.dense(self.dropout(x)))  # (B, C)
        return self.out_proj(self.dropout(x))  # (B, num_labels)


def head_dropout(config: ModelConfig) -> float:
    """Dropout before a head: ``classifier_dropout`` when set, else ``hidden_dropout`` (HF's rule)."""
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout


def linear_head(config: ModelConfig, num_labels: int) -> nn.Linear:
    """``nn.Linear(C, num_labels)``: BERT's ``classifier`` and the encoders' token ``classifier``."""
    return nn.Linear(config.hidden_size, num_labels)


def score_head(config: ModelConfig, num_labels: int) -> nn.Linear:
    """``nn.Linear(C, num_labels, bias=False)``: the decoders' ``score``."""
    return nn.Linear(config.hidden_size, num_labels, bias=False)


def lm_head(config: ModelConfig, num_labels: int) -> nn.Linear:
    """``nn.Linear(C, V, bias=False)``: the decoders' ``lm_head`` (``num_labels`` is ignored)."""
    return nn.Linear(config.hidden_size, config.vocab_size, bias=False)


def roberta_head(config: ModelConfig, num_labels: int) -> RobertaClassificationHead:
    return RobertaClassificationHead(config.hidden_size, num_labels, head_dropout(config))


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The hidden state of the last position whose attention_mask is 1 (the last position without a mask).

    Args:
        hidden: ``(B, T, C)``.
        attention_mask: ``(B, T)`` of 1 / 0, or None.

    Returns:
        ``(B, C)``.
    """
    if attention_mask is None:
        return hidden[:, -1]
    positions = torch.arange(hidden.shape[1], device=hidden.device)  # (T,)
    last = (positions * attention_mask.to(positions.dtype)).argmax(dim=-1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, C)


def pool(mode: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None, backbone: nn.Module) -> torch.Tensor:
    """Apply a pooling mode (see the module docstring) to ``(B, T, C)`` hidden states."""
    if mode == "pooler":
        return backbone.pooler(hidden)  # (B, C)
    if mode == "first":
        return hidden[:, 0]  # (B, C)
    if mode == "last":
        return last_token(hidden, attention_mask)  # (B, C)
    if mode == "tokens":
        return hidden  # (B, T, C)
    raise ValueError(f"unknown pooling mode {mode!r}; use 'pooler', 'first', 'last' or 'tokens'")
