"""GPT-2: learned positions, pre-LayerNorm blocks, fused qkv projection.

Radford et al., "Language Models are Unsupervised Multitask Learners" (2019), section 2.3.  Module names are
those of ``transformers``' ``GPT2Model`` (registered under ``transformer``): ``wte, wpe, h.i.ln_1,
h.i.attn.c_attn, h.i.attn.c_proj, h.i.ln_2, h.i.mlp.c_fc, h.i.mlp.c_proj, ln_f``.  HF stores these projections
as ``Conv1D`` with an ``(in, out)`` weight; we use ``nn.Linear`` (``(out, in)``, which is what PEFT layers
expect) and transpose in the key table (``FAMILY.transforms``) at load and at save.
"""

from __future__ import annotations

import torch
from torch import nn

from minift.models.activations import activation
from minift.models.attention import attention, build_mask
from minift.models.cache import KVCache, LayerCache
from minift.models.config import ModelConfig
from minift.models.dropout import Dropout
from minift.models.heads import linear_head, lm_head, score_head
from minift.models.registry import Family, HeadSpec, KeyTransform, MemorySpec
from minift.models.task_model import run_block


class GPT2Attention(nn.Module):
    """Causal self-attention with one fused ``c_attn`` producing q, k, v.

    Args:
        config: a gpt2 ``ModelConfig``.
        layer_idx: block index (used only by ``scale_attn_by_inverse_layer_idx`` configs).
    """

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        C = config.hidden_size
        self.num_heads, self.head_dim = config.num_heads, C // config.num_heads
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.attn_dropout = config.attention_dropout
        self.resid_dropout = Dropout(config.hidden_dropout)
        raw = config.raw
        self.scale = self.head_dim**-0.5 if raw.get("scale_attn_weights", True) else 1.0
        if raw.get("scale_attn_by_inverse_layer_idx", False):
            self.scale /= float(layer_idx + 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: LayerCache | None = None) -> torch.Tensor:
        """x: (B, T, C); mask: boolean (B, 1, T, S) or None, S = T or, with ``cache`` (the keys and values of
        earlier tokens), past + T. Returns (B, T, C)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, nh, S, hs)
        dropout_p = self.attn_dropout if self.training else 0.0
        y = attention(q, k, v, mask, causal=True, dropout_p=dropout_p, scale=self.scale)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class GPT2MLP(nn.Module):
    """``c_proj(act(c_fc(x)))`` with dropout."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = GPT2MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: LayerCache | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln_1(x), mask, cache)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    """The GPT-2 backbone (HF ``GPT2Model``).

    Args:
        config: a gpt2 ``ModelConfig``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = Dropout(config.embedding_dropout)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_layers))
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
        mask = build_mask(attention_mask, T, causal=True, device=x.device, past=past,
                          segment_ids=segment_ids)  # (B, 1, T, S) or None
        caches = [None] * len(self.h) if cache is None else cache.layers
        for block, layer_cache in zip(self.h, caches):
            x = run_block(block, self.gradient_checkpointing, x, mask, layer_cache)
        return self.ln_f(x)


def embed_with_positions(backbone: nn.Module, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                         position_ids: torch.Tensor | None, past: int = 0) -> torch.Tensor:
    """Token + learned absolute position embeddings, then dropout (GPT-2 and GPT-Neo share this).

    Args:
        backbone: a module with ``wte``, ``wpe`` and ``drop``.
        input_ids: (B, T), or None when ``inputs_embeds`` (B, T, C) is given.
        position_ids: (B, T) or (T,); default past..past+T-1.
        past: tokens already in the KV cache (0 without one).

    Returns:
        (B, T, C).
    """
    x = backbone.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
    T, limit = x.shape[1], backbone.wpe.num_embeddings
    if position_ids is None:
        position_ids = torch.arange(past, past + T, device=x.device)  # (T,)
        longest = past + T
    elif position_ids.device.type == "cpu":
        longest = int(position_ids.max()) + 1 if position_ids.numel() else 0
    else:  # not read back: that would synchronise the device; an id past the table fails in the lookup
        longest = 0
    if longest > limit:
        raise ValueError(f"sequence of {longest} tokens is longer than this model's {limit} positions; "
                         "truncate the input")
    return backbone.drop(x + backbone.wpe(position_ids))  # (B, T, C)


def build_backbone(config: ModelConfig, head_kind: str | None = None) -> GPT2Model:
    """The GPT-2 backbone for ``config``."""
    return GPT2Model(config)


def _transpose(w: torch.Tensor) -> torch.Tensor:
    return w.t().contiguous()


# HF's Conv1D weights are (in, out); nn.Linear wants (out, in).
CONV1D = r"\.(c_attn|c_proj|c_fc)\.weight$"
FAMILY = Family(
    model_type="gpt2",
    prefix="transformer",
    build_backbone=build_backbone,
    hf_class="GPT2Model",
    config_keys={
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
    config_defaults={"hidden_act": "gelu_new", "layer_norm_eps": 1e-5, "max_position_embeddings": 1024,
                     "hidden_dropout": 0.1, "attention_dropout": 0.1, "embedding_dropout": 0.1, "type_vocab_size": 0},
    architectures=("GPT2",),
    config_markers=("n_embd",),
    heads={
        "causal-lm": HeadSpec(key="lm_head", build=lm_head, pooling="tokens", hf_class="GPT2LMHeadModel", tied=True),
        "classification": HeadSpec(
            key="score", build=score_head, pooling="last", hf_class="GPT2ForSequenceClassification"
        ),
        "regression": HeadSpec(key="score", build=score_head, pooling="last", hf_class="GPT2ForSequenceClassification"),
        # dropout then Linear(C, num_labels) with bias on every token, as transformers' GPT2ForTokenClassification
        "token-classification": HeadSpec(
            key="classifier", build=linear_head, pooling="tokens", hf_class="GPT2ForTokenClassification", dropout=True
        ),
    },
    # Old checkpoints saved the causal-mask buffers; we build masks on the fly.
    skip=(r"\.attn\.(bias|masked_bias)$",),
    transforms=(KeyTransform(CONV1D, load=_transpose, save=_transpose),),
    conv1d=CONV1D,
    default_head="causal-lm",
    is_decoder=True,
    lora_targets=("c_attn",),  # the fused q/k/v projection (peft's default for GPT-2)
    adapter_sites={"attention": "attn.c_proj", "ffn": "mlp.c_proj"},
    bpe_processor="ByteLevel",
    tokenizer_classes=("GPT2Tokenizer", "GPT2TokenizerFast"),
    memory=MemorySpec(attention=("attn.c_attn",), mlp=("mlp.c_fc",)),
)
