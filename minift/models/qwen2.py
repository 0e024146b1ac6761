"""Qwen2: the Llama architecture with biases on the query, key and value projections.

Qwen Team, "Qwen2 Technical Report", https://arxiv.org/abs/2407.10671 (section 2.2: GQA, SwiGLU, RoPE, RMSNorm
pre-normalisation, and "QKV bias"). Everything else is Llama's (``llama.py``), module names included
(``model.layers.i.self_attn.{q,k,v,o}_proj`` ...), so only the attention differs: ``q/k/v_proj`` have a bias,
``o_proj`` has none. Embeddings are tied where ``tie_word_embeddings`` says so (the small checkpoints).
Sliding-window attention is off unless ``use_sliding_window``; then the layers from ``max_window_layers`` on
(or those ``layer_types`` names "sliding_attention") see the last ``sliding_window`` tokens, as in transformers.
"""
from __future__ import annotations

from torch import nn

from minift.models.config import ModelConfig
from minift.models.heads import linear_head, lm_head, score_head
from minift.models.llama import (
    ADAPTER_SITES,
    CONFIG_KEYS,
    GGUF_TENSORS,
    MEMORY,
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaModel,
)
from minift.models.registry import Family, GGUFSpec, HeadSpec
from minift.models.rope import read_rope_config, write_rope_config


class Qwen2Attention(LlamaAttention):
    """Llama's attention with ``bias=True`` on ``q_proj``, ``k_proj``, ``v_proj`` and none on ``o_proj``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        C, hs = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(C, self.num_heads * hs, bias=True)
        self.k_proj = nn.Linear(C, self.num_kv_heads * hs, bias=True)
        self.v_proj = nn.Linear(C, self.num_kv_heads * hs, bias=True)
        self.o_proj = nn.Linear(self.num_heads * hs, C, bias=False)


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_class = Qwen2Attention


class Qwen2Model(LlamaModel):
    """The Qwen2 backbone (HF ``Qwen2Model``)."""

    layer_class = Qwen2DecoderLayer


def build_backbone(config: ModelConfig, head_kind: str | None = None) -> Qwen2Model:
    return Qwen2Model(config)


def read_config(d: dict, values: dict) -> None:
    """RoPE as Llama; the sliding-window layers as transformers' ``Qwen2Config`` derives them."""
    read_rope_config(d, values)
    window = d.get("sliding_window") if d.get("use_sliding_window") else None
    layers = values.get("num_layers", d.get("num_hidden_layers"))
    types = d.get("layer_types") or [
        "sliding_attention" if window is not None and i >= d.get("max_window_layers", 28) else "full_attention"
        for i in range(layers)]
    if window is not None and "sliding_attention" in types:
        values["window_size"] = int(window)
        values["attention_layers"] = ["local" if t == "sliding_attention" else "global" for t in types]


def write_config(config: ModelConfig, d: dict) -> None:
    write_rope_config(config, d)
    if config.attention_layers is not None:
        d["use_sliding_window"], d["sliding_window"] = True, config.window_size
        d["layer_types"] = ["sliding_attention" if k == "local" else "full_attention" for k in config.attention_layers]


_SEQUENCE = HeadSpec(key="score", build=score_head, pooling="last", hf_class="Qwen2ForSequenceClassification")
FAMILY = Family(
    model_type="qwen2",
    prefix="model",
    build_backbone=build_backbone,
    hf_class="Qwen2Model",
    config_keys={k: v for k, v in CONFIG_KEYS.items() if k not in ("attention_bias", "mlp_bias")},
    config_defaults={"hidden_act": "silu", "layer_norm_eps": 1e-6, "max_position_embeddings": 32768,
                     "type_vocab_size": 0, "tie_word_embeddings": False},
    read_config=read_config,
    write_config=write_config,
    architectures=("Qwen2",),
    heads={
        "causal-lm": HeadSpec(key="lm_head", build=lm_head, pooling="tokens", hf_class="Qwen2ForCausalLM", tied=True),
        "classification": _SEQUENCE,
        "regression": _SEQUENCE,
        "token-classification": HeadSpec(key="score", build=linear_head, pooling="tokens",
                                         hf_class="Qwen2ForTokenClassification", dropout=True),
    },
    skip=(r"rotary_emb\.inv_freq$",),
    default_head="causal-lm",
    is_decoder=True,
    gguf=GGUFSpec(arch="qwen2", tensors=GGUF_TENSORS),  # llama.cpp does not permute Qwen2's Q/K rows
    lora_targets=("q_proj", "v_proj"),
    adapter_sites=ADAPTER_SITES,
    memory=MEMORY,
    bpe_processor="ByteLevel",
    tokenizer_classes=("Qwen2Tokenizer", "Qwen2TokenizerFast"),
)
