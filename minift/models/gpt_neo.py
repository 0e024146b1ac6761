"""GPT-Neo: GPT-2-like blocks whose layers alternate global and local (sliding-window) causal attention.

Black et al., "GPT-Neo" (EleutherAI, 2021).  Two quirks matter for parity with checkpoints: local layers
see only the last ``window_size`` keys (query i attends to j with ``i - window < j <= i``), and the attention
scores are **not** scaled by ``1/sqrt(head_dim)`` (SDPA with ``scale=1.0``; computed in fp32 as HF does so
the larger logits do not overflow in half precision).  Module names are those of ``transformers``'
``GPTNeoModel`` (registered under ``transformer``): ``wte, wpe, h.i.ln_1,
h.i.attn.attention.{q_proj,k_proj,v_proj,out_proj}, h.i.ln_2, h.i.mlp.{c_fc,c_proj}, ln_f`` (plain Linear
weights, no transposes).
"""

from __future__ import annotations

import torch
from torch import nn

from minift.models.attention import attention, build_mask
from minift.models.cache import KVCache, LayerCache
from minift.models.config import ModelConfig
from minift.models.dropout import Dropout
from minift.models.gpt2 import GPT2MLP, embed_with_positions
from minift.models.heads import linear_head, lm_head, score_head
from minift.models.registry import Family, HeadSpec, MemorySpec
from minift.models.task_model import run_block


class GPTNeoSelfAttention(nn.Module):
    """Unscaled causal self-attention; global or local is decided by the mask the block receives."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.num_heads, self.head_dim = config.num_heads, C // config.num_heads
        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = nn.Linear(C, C, bias=False)
        self.v_proj = nn.Linear(C, C, bias=False)
        self.out_proj = nn.Linear(C, C)
        self.attn_dropout = config.attention_dropout
        self.resid_dropout = Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: LayerCache | None = None) -> torch.Tensor:
        """x: (B, T, C); mask: boolean (B, 1, T, S), (T, S) or None (plain causal), S = T or, with ``cache`` (the
        keys and values of earlier tokens), past + T. Returns (B, T, C)."""
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, nh, S, hs), cached in the activations' dtype
        dropout_p = self.attn_dropout if self.training else 0.0
        # Unscaled scores are large; HF computes them in fp32, so do we.
        y = attention(q.float(), k.float(), v.float(), mask, causal=True, dropout_p=dropout_p, scale=1.0)
        y = y.to(x.dtype).transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.out_proj(y))


class GPTNeoAttention(nn.Module):
    """HF's wrapper level (``attn.attention``), kept so the keys match; records the layer's kind."""

    def __init__(self, config: ModelConfig, attention_type: str) -> None:
        super().__init__()
        self.attention_type = attention_type  # "global" | "local"
        self.attention = GPTNeoSelfAttention(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: LayerCache | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.attention(x, mask, cache)


class GPTNeoBlock(nn.Module):
    """Pre-norm block; ``attention_type`` picks which of the two masks it uses."""

    def __init__(self, config: ModelConfig, attention_type: str) -> None:
        super().__init__()
        self.attention_type = attention_type
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = GPTNeoAttention(config, attention_type)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = GPT2MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: LayerCache | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln_1(x), mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPTNeoModel(nn.Module):
    """The GPT-Neo backbone (HF ``GPTNeoModel``).

    Args:
        config: a gpt_neo ``ModelConfig`` (``attention_layers`` per layer, ``window_size``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        layers = config.attention_layers or ["global"] * config.num_layers
        self.window_size = config.window_size or 256
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = Dropout(config.embedding_dropout)
        self.h = nn.ModuleList(GPTNeoBlock(config, kind) for kind in layers)
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False

    @property
    def blocks(self) -> nn.ModuleList:
        return self.h

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states.

        Args:
            input_ids: (B, T) token ids, or None when ``inputs_embeds`` is given.
            attention_mask: (B, T) 1 (keep) / 0 (pad), or None; (B, past + T) with a ``cache`` of past tokens.
            inputs_embeds: (B, T, C) in place of ``input_ids``.
            position_ids: (B, T) or (T,) positions; default past..past+T-1 (0..T-1 without a cache).
            cache: a ``KVCache`` holding the keys and values of the past tokens; this call appends its T tokens.
            segment_ids: (B, T) packed examples (1, 2, ...; 0 on padding): a token attends only within its own
                (``minift.models.attention.build_mask``); pass each example's ``position_ids`` with them.

        Returns:
            (B, T, C).
        """
        T = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        past = 0 if cache is None else cache.check(len(self.h), T)
        x = embed_with_positions(self, input_ids, inputs_embeds, position_ids, past)  # (B, T, C)
        masks = {  # (B, 1, T, S), (T, S) or None
            kind: build_mask(attention_mask, T, causal=True, window=self.window_size if kind == "local" else None,
                             device=x.device, past=past, segment_ids=segment_ids) for kind in ("global", "local")
        }
        caches = [None] * len(self.h) if cache is None else cache.layers
        for block, layer_cache in zip(self.h, caches):
            x = run_block(block, self.gradient_checkpointing, x, masks[block.attention_type], layer_cache)
        return self.ln_f(x)


def build_backbone(config: ModelConfig, head_kind: str | None = None) -> GPTNeoModel:
    """The GPT-Neo backbone for ``config``."""
    return GPTNeoModel(config)


def read_config(d: dict, values: dict) -> None:
    """The per-layer "global" / "local" pattern, as transformers reads it: ``attention_types``
    (``[[["global", "local"], 12]]`` = the pattern repeated 12 times), overwritten by a saved ``attention_layers``."""
    if d.get("attention_layers"):
        values["attention_layers"] = list(d["attention_layers"])
    elif d.get("attention_types"):
        values["attention_layers"] = [kind for pattern, repeat in d["attention_types"] for _ in range(repeat)
                                      for kind in pattern]
    else:
        values["attention_layers"] = ["global"] * d["num_layers"]


def write_config(config: ModelConfig, d: dict) -> None:
    d["attention_types"] = [[[kind], 1] for kind in config.attention_layers]
    d["attention_layers"] = list(config.attention_layers)


FAMILY = Family(
    model_type="gpt_neo",
    prefix="transformer",
    build_backbone=build_backbone,
    hf_class="GPTNeoModel",
    config_keys={
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
    config_defaults={"hidden_act": "gelu_new", "layer_norm_eps": 1e-5, "max_position_embeddings": 2048,
                     "window_size": 256, "type_vocab_size": 0, "classifier_dropout": 0.1},
    read_config=read_config,
    write_config=write_config,
    architectures=("GPTNeo",),
    heads={
        "causal-lm": HeadSpec(key="lm_head", build=lm_head, pooling="tokens", hf_class="GPTNeoForCausalLM", tied=True),
        "classification": HeadSpec(
            key="score", build=score_head, pooling="last", hf_class="GPTNeoForSequenceClassification"
        ),
        "regression": HeadSpec(
            key="score", build=score_head, pooling="last", hf_class="GPTNeoForSequenceClassification"
        ),
        # dropout then Linear(C, num_labels) with bias on every token, as transformers' GPTNeoForTokenClassification
        "token-classification": HeadSpec(
            key="classifier", build=linear_head, pooling="tokens", hf_class="GPTNeoForTokenClassification", dropout=True
        ),
    },
    # Old checkpoints saved the causal/local mask buffers; we build masks on the fly.
    skip=(r"\.attn\.attention\.(bias|masked_bias)$",),
    default_head="causal-lm",
    is_decoder=True,
    lora_targets=("q_proj", "v_proj"),
    adapter_sites={"attention": "attn.attention.out_proj", "ffn": "mlp.c_proj"},
    bpe_processor="ByteLevel",
    memory=MemorySpec(attention=("attn.attention.q_proj", "attn.attention.k_proj", "attn.attention.v_proj"),
                      mlp=("mlp.c_fc",), attention_fp32=True),
)
