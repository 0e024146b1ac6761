"""BERT (and SciBERT, which is BERT weights with its own vocabulary): a post-LayerNorm encoder.

Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers" (2019), section 3. Module names are those
of ``transformers``' ``BertModel`` (registered under ``bert``): ``embeddings.{word,position,token_type}_embeddings``,
``embeddings.LayerNorm``, ``encoder.layer.i.attention.self.{query,key,value}``,
``encoder.layer.i.attention.output.{dense,LayerNorm}``, ``encoder.layer.i.intermediate.dense``,
``encoder.layer.i.output.{dense,LayerNorm}``, ``pooler.dense``. RoBERTa (``roberta.py``) reuses these layers.
"""
from __future__ import annotations

import torch
from torch import nn

from minift.models.activations import activation
from minift.models.attention import attention, build_mask
from minift.models.config import ModelConfig
from minift.models.dropout import Dropout
from minift.models.errors import ConfigError
from minift.models.heads import linear_head
from minift.models.registry import Family, HeadSpec, MemorySpec
from minift.models.task_model import run_block


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        C = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, C)
        self.token_type_embeddings = nn.Embedding(max(config.type_vocab_size, 1), C)
        self.LayerNorm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)

    def position_ids(self, input_ids: torch.Tensor | None, T: int, device: torch.device) -> torch.Tensor:
        """``(1, T)`` or ``(B, T)`` position ids: 0..T-1 for BERT."""
        return torch.arange(T, device=device)[None, :]

    def forward(self, input_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T)`` ids (or ``(B, T, C)`` embeddings) → ``(B, T, C)``."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # (B, T, C)
        B, T, _ = inputs_embeds.shape
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}; truncate the input")
        positions = self.position_ids(input_ids, T, inputs_embeds.device)  # (1 or B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros(B, T, dtype=torch.long, device=inputs_embeds.device)
        x = inputs_embeds + self.position_embeddings(positions) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))  # (B, T, C)


class BertSelfAttention(nn.Module):
    """Multi-head attention projections ``query``, ``key``, ``value`` and SDPA."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        C = config.hidden_size
        self.num_heads, self.head_dim = config.num_heads, C // config.num_heads
        self.query, self.key, self.value = nn.Linear(C, C), nn.Linear(C, C), nn.Linear(C, C)
        self.attention_dropout = config.attention_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``(B, T, C)``, boolean ``mask`` ``(B, 1, 1, T)`` or None → ``(B, T, C)`` (before ``output``)."""
        B, T, C = x.shape
        q = self.query(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        y = attention(q, k, v, mask, dropout_p=self.attention_dropout if self.training else 0.0)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)


class BertSelfOutput(nn.Module):
    """``LayerNorm(dropout(dense(h)) + residual)`` after attention."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``(B, T, C)``, ``(B, T, C)`` → ``(B, T, C)``."""
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertAttention(nn.Module):
    """Self-attention (``self``) and its output projection + residual LayerNorm (``output``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, T, C)`` → ``(B, T, C)``."""
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    """First MLP layer: ``act(dense(x))``, ``(B, T, C)`` → ``(B, T, intermediate_size)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    """Second MLP layer + residual LayerNorm: ``(B, T, intermediate_size)``, ``(B, T, C)`` → ``(B, T, C)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class BertLayer(nn.Module):
    """One encoder block: ``attention`` then the MLP (``intermediate``, ``output``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, T, C)`` and a boolean key mask ``(B, 1, 1, T)`` (or None) → ``(B, T, C)``."""
        x = self.attention(x, mask)  # (B, T, C)
        return self.output(self.intermediate(x), x)  # (B, T, C)


class BertEncoder(nn.Module):
    """The stack of ``BertLayer`` blocks (``layer``)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                gradient_checkpointing: bool = False) -> torch.Tensor:
        """``(B, T, C)`` → ``(B, T, C)``."""
        for block in self.layer:
            x = run_block(block, gradient_checkpointing, x, mask)
        return x


class BertPooler(nn.Module):
    """``tanh(dense(h[:, 0]))``: the first token's hidden state, ``(B, T, C)`` → ``(B, C)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """The BERT encoder: ``embeddings``, ``encoder``, and ``pooler`` (None when ``add_pooler`` is False).

    ``forward`` returns the last hidden states ``(B, T, C)``; the pooler is applied by heads that need it.
    """

    embeddings_class = BertEmbeddings

    def __init__(self, config: ModelConfig, add_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = self.embeddings_class(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooler else None
        self.gradient_checkpointing = False

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.layer

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Encode a batch.

        Args:
            input_ids: ``(B, T)``; or ``inputs_embeds`` ``(B, T, C)``.
            attention_mask: ``(B, T)`` 1 (keep) / 0 (pad), or None.
            token_type_ids: ``(B, T)`` segment ids, or None (all 0).

        Returns:
            ``(B, T, C)`` last hidden states.
        """
        x = self.embeddings(input_ids, token_type_ids, inputs_embeds)  # (B, T, C)
        mask = build_mask(attention_mask, x.shape[1])  # (B, 1, 1, T) or None
        return self.encoder(x, mask, self.gradient_checkpointing)  # (B, T, C)


def _build(config: ModelConfig, head_kind: str | None) -> BertModel:
    return BertModel(config, add_pooler=head_kind in (None, "classification", "regression"))


def read_config(d: dict, values: dict) -> None:
    """Only absolute positions exist in minift's BERT family (RoBERTa shares this check)."""
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"position_embedding_type {d['position_embedding_type']!r} is not supported "
                          "(only 'absolute')")


# config.json keys of BERT-style encoders (RoBERTa reads the same): ModelConfig field → HF key(s).
CONFIG_KEYS = {
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
# transformers' BertConfig defaults for keys a config.json leaves out.
CONFIG_DEFAULTS = {"hidden_act": "gelu", "layer_norm_eps": 1e-12, "type_vocab_size": 2, "max_position_embeddings": 512,
                   "hidden_dropout": 0.1, "attention_dropout": 0.1, "embedding_dropout": 0.1, "pad_token_id": 0}
# Houlsby's two adapter sites: the attention output and the feed-forward output projections.
ADAPTER_SITES = {"attention": "attention.output.dense", "ffn": "output.dense"}

_SEQUENCE = HeadSpec(key="classifier", build=linear_head, pooling="pooler", hf_class="BertForSequenceClassification",
                     dropout=True)
FAMILY = Family(
    model_type="bert",
    prefix="bert",
    build_backbone=_build,
    hf_class="BertModel",
    config_keys=CONFIG_KEYS,
    config_defaults=CONFIG_DEFAULTS,
    read_config=read_config,
    architectures=("Bert",),
    config_markers=("type_vocab_size", "num_hidden_layers"),  # SciBERT's config.json names no model_type
    heads={
        "classification": _SEQUENCE,
        "regression": _SEQUENCE,
        "token-classification": HeadSpec(key="classifier", build=linear_head, pooling="tokens",
                                         hf_class="BertForTokenClassification", dropout=True),
    },
    # position_ids: a buffer older transformers saved; cls.*: the pre-training (MLM / NSP) heads.
    skip=(r"\.position_ids$", r"^cls\."),
    optional=(r"^bert\.pooler\.",),  # absent from *ForTokenClassification checkpoints; unused by some heads
    lora_targets=("query", "value"),
    adapter_sites=ADAPTER_SITES,
    memory=MemorySpec(attention=("attention.self.query", "attention.self.key", "attention.self.value"),
                      mlp=("intermediate.dense",), post_norm=True, token_types=True, embedding_norm=True,
                      pooler=("dense", "tanh")),
)
