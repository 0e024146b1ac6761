"""Llama: RMSNorm, rotary positions, grouped-query attention and a SwiGLU MLP.

Touvron et al., "LLaMA", https://arxiv.org/abs/2302.13971 (section 2.2: pre-normalisation with RMSNorm,
SwiGLU, rotary embeddings); GQA: Ainslie et al., https://arxiv.org/abs/2305.13245.  Module names are those of
``transformers``' ``LlamaModel`` (registered under ``model``), so a Llama/SmolLM/TinyLlama checkpoint loads as a
rename-free state dict: ``embed_tokens``, ``layers.i.self_attn.{q,k,v,o}_proj``,
``layers.i.mlp.{gate,up,down}_proj``, ``layers.i.{input,post_attention}_layernorm``, ``norm``.
"""

from __future__ import annotations

import torch
from torch import nn

from minift.models.activations import activation
from minift.models.attention import attention, build_mask
from minift.models.cache import KVCache, LayerCache
from minift.models.config import ModelConfig
from minift.models.heads import linear_head, lm_head, score_head
from minift.models.registry import Family, GGUFSpec, HeadSpec, MemorySpec
from minift.models.rope import RotaryEmbedding, apply_rotary, read_rope_config, write_rope_config
from minift.models.task_model import run_block


class LlamaRMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, https://arxiv.org/abs/1910.07467), computed in fp32.

    Args:
        hidden_size: C.
        eps: added to the mean square.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)."""
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LlamaAttention(nn.Module):
    """Causal self-attention with rotary positions and ``num_kv_heads`` shared key/value heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        C, hs = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, hs
        self.dropout = config.attention_dropout
        bias = config.attention_bias
        self.q_proj = nn.Linear(C, self.num_heads * hs, bias=bias)
        self.k_proj = nn.Linear(C, self.num_kv_heads * hs, bias=bias)
        self.v_proj = nn.Linear(C, self.num_kv_heads * hs, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * hs, C, bias=bias)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C); cos/sin: (B, T, hs) or (T, hs); mask: boolean (B, 1, T, S) or None, S = T or, with
        ``cache`` (the keys and values of S - T earlier tokens), past + T. Returns (B, T, C)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rotary(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, nkv, S, hs): rotated at their own positions when cached
        dropout_p = self.dropout if self.training else 0.0
        y = attention(q, k, v, mask, causal=True, dropout_p=dropout_p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # (B, T, nh*hs)
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: ``down(act(gate(x)) * up(x))`` (Shazeer, https://arxiv.org/abs/2002.05202)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        C, H, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(C, H, bias=bias)
        self.up_proj = nn.Linear(C, H, bias=bias)
        self.down_proj = nn.Linear(H, C, bias=bias)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``.

    ``window``: the sliding-window span of this layer's causal attention (Mistral, Qwen2), or None (global).
    """

    attention_class = LlamaAttention  # Qwen2 swaps in its attention (q/k/v biases)

    def __init__(self, config: ModelConfig, window: int | None = None) -> None:
        super().__init__()
        self.window = window
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.layer_norm_eps)
        self.self_attn = self.attention_class(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.layer_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


def layer_windows(config: ModelConfig) -> list[int | None]:
    """Each layer's sliding-window span: ``window_size`` for the layers ``attention_layers`` marks "local", None
    (global causal attention) for the others and for every layer of a config without ``attention_layers``."""
    kinds = config.attention_layers or ["global"] * config.num_layers
    return [config.window_size if kind == "local" else None for kind in kinds]


class LlamaModel(nn.Module):
    """The Llama backbone (HF ``LlamaModel``): embeddings, decoder layers, final RMSNorm.

    Args:
        config: a llama-style ``ModelConfig`` (sliding-window layers from ``attention_layers`` / ``window_size``).
    """

    layer_class = LlamaDecoderLayer  # Qwen2 swaps in its layer

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(self.layer_class(config, window) for window in layer_windows(config))
        self.norm = LlamaRMSNorm(config.hidden_size, config.layer_norm_eps)
        self.rotary_emb = RotaryEmbedding(
            config.head_dim, config.rope_theta, config.rope_scaling, config.max_position_embeddings
        )
        self.gradient_checkpointing = False

    @property
    def blocks(self) -> nn.ModuleList:
        return self.layers

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

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
            inputs_embeds: (B, T, C) input embeddings in place of ``input_ids``.
            position_ids: (B, T) or (T,) positions; default past..past+T-1 (0..T-1 without a cache, as
                transformers). Left-padded generation passes positions counted over the real tokens.
            cache: a ``KVCache`` holding the keys and values of the past tokens; this call appends its T tokens.
            segment_ids: (B, T) packed examples (1, 2, ...; 0 on padding): a token attends only within its own
                (``minift.models.attention.build_mask``); pass each example's ``position_ids`` with them.

        Returns:
            (B, T, C).
        """
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        T = x.shape[1]
        past = 0 if cache is None else cache.check(len(self.layers), T)
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device)  # (T,)
        cos, sin = self.rotary_emb(position_ids, x.dtype)  # (T, hs) or (B, T, hs)
        masks = {window: build_mask(attention_mask, T, causal=True, window=window, device=x.device, past=past,
                                  segment_ids=segment_ids)
                 for window in {layer.window for layer in self.layers}}  # (B, 1, T, S), (T, S) or None
        caches = [None] * len(self.layers) if cache is None else cache.layers
        for layer, layer_cache in zip(self.layers, caches):
            x = run_block(layer, self.gradient_checkpointing, x, cos, sin, masks[layer.window], layer_cache)
        return self.norm(x)


def build_backbone(config: ModelConfig, head_kind: str | None = None) -> LlamaModel:
    """The Llama backbone for ``config`` (the head kind does not change it)."""
    return LlamaModel(config)


# config.json keys of Llama-style decoders (Qwen2 and Mistral read the same): ModelConfig field → HF key(s).
CONFIG_KEYS = {
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
}
# llama.cpp tensor names → HF keys ({i}: block index), shared by the Llama-style GGUF architectures.
GGUF_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "blk.{i}.attn_norm": "model.layers.{i}.input_layernorm",
    "blk.{i}.attn_q": "model.layers.{i}.self_attn.q_proj",
    "blk.{i}.attn_k": "model.layers.{i}.self_attn.k_proj",
    "blk.{i}.attn_v": "model.layers.{i}.self_attn.v_proj",
    "blk.{i}.attn_output": "model.layers.{i}.self_attn.o_proj",
    "blk.{i}.ffn_norm": "model.layers.{i}.post_attention_layernorm",
    "blk.{i}.ffn_gate": "model.layers.{i}.mlp.gate_proj",
    "blk.{i}.ffn_up": "model.layers.{i}.mlp.up_proj",
    "blk.{i}.ffn_down": "model.layers.{i}.mlp.down_proj",
}
ADAPTER_SITES = {"attention": "self_attn.o_proj", "ffn": "mlp.down_proj"}
# How a Llama-style block keeps activations (minift.memory); Qwen2 and Mistral blocks keep the same.
MEMORY = MemorySpec(attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                    mlp=("mlp.gate_proj", "mlp.up_proj"), norm="rms", dropout=False, positions="rotary")

FAMILY = Family(
    model_type="llama",
    prefix="model",
    build_backbone=build_backbone,
    hf_class="LlamaModel",
    config_keys=CONFIG_KEYS,
    config_defaults={"hidden_act": "silu", "layer_norm_eps": 1e-6, "max_position_embeddings": 2048,
                     "type_vocab_size": 0, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False},
    read_config=read_rope_config,
    write_config=write_rope_config,
    architectures=("Llama",),
    heads={
        "causal-lm": HeadSpec(key="lm_head", build=lm_head, pooling="tokens", hf_class="LlamaForCausalLM", tied=True),
        "classification": HeadSpec(
            key="score", build=score_head, pooling="last", hf_class="LlamaForSequenceClassification"
        ),
        "regression": HeadSpec(
            key="score", build=score_head, pooling="last", hf_class="LlamaForSequenceClassification"
        ),
        # dropout then Linear(C, num_labels) with bias on every token, as transformers' LlamaForTokenClassification
        "token-classification": HeadSpec(
            key="score", build=linear_head, pooling="tokens", hf_class="LlamaForTokenClassification", dropout=True
        ),
    },
    skip=(r"rotary_emb\.inv_freq$",),
    default_head="causal-lm",
    is_decoder=True,
    # rope_freqs holds llama3 frequency factors (applied to the RoPE frequencies instead of loaded).
    gguf=GGUFSpec(arch="llama", tensors=GGUF_TENSORS, permute_qk=True, skip=(r"^rope_freqs\.weight$",)),
    lora_targets=("q_proj", "v_proj"),
    adapter_sites=ADAPTER_SITES,
    memory=MEMORY,
)
