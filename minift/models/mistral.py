"""Mistral: the Llama architecture with sliding-window attention.

Jiang et al., "Mistral 7B", https://arxiv.org/abs/2310.06825 (section 2: every layer attends to the last
``sliding_window`` tokens, query i to keys j with ``i - W < j <= i``; GQA). The blocks, module names
(``model.layers.i.self_attn.{q,k,v,o}_proj`` ...) and RoPE are Llama's (``llama.py``); ``sliding_window`` null
means full causal attention. llama.cpp converts Mistral checkpoints to the "llama" GGUF architecture, so a
Mistral GGUF loads through the Llama family.
"""
from __future__ import annotations

from minift.models.config import ModelConfig
from minift.models.heads import linear_head, lm_head, score_head
from minift.models.llama import ADAPTER_SITES, CONFIG_KEYS, MEMORY, LlamaModel
from minift.models.registry import Family, HeadSpec
from minift.models.rope import read_rope_config, write_rope_config


def build_backbone(config: ModelConfig, head_kind: str | None = None) -> LlamaModel:
    """Llama's backbone; ``config.attention_layers`` makes every layer a sliding-window one."""
    return LlamaModel(config)


def read_config(d: dict, values: dict) -> None:
    read_rope_config(d, values)
    window = d.get("sliding_window", 4096)  # transformers' MistralConfig default
    if window is not None:
        values["window_size"] = int(window)
        values["attention_layers"] = ["local"] * values.get("num_layers", d.get("num_hidden_layers"))


def write_config(config: ModelConfig, d: dict) -> None:
    write_rope_config(config, d)
    d["sliding_window"] = config.window_size if config.attention_layers is not None else None


_SEQUENCE = HeadSpec(key="score", build=score_head, pooling="last", hf_class="MistralForSequenceClassification")
FAMILY = Family(
    model_type="mistral",
    prefix="model",
    build_backbone=build_backbone,
    hf_class="MistralModel",
    config_keys={k: v for k, v in CONFIG_KEYS.items() if k not in ("attention_bias", "mlp_bias")},
    config_defaults={"hidden_act": "silu", "layer_norm_eps": 1e-6, "max_position_embeddings": 4096 * 32,
                     "type_vocab_size": 0, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2},
    read_config=read_config,
    write_config=write_config,
    architectures=("Mistral",),
    heads={
        "causal-lm": HeadSpec(key="lm_head", build=lm_head, pooling="tokens", hf_class="MistralForCausalLM",
                              tied=True),
        "classification": _SEQUENCE,
        "regression": _SEQUENCE,
        "token-classification": HeadSpec(key="score", build=linear_head, pooling="tokens",
                                         hf_class="MistralForTokenClassification", dropout=True),
    },
    skip=(r"rotary_emb\.inv_freq$",),
    default_head="causal-lm",
    is_decoder=True,
    lora_targets=("q_proj", "v_proj"),
    adapter_sites=ADAPTER_SITES,
    memory=MEMORY,
)
