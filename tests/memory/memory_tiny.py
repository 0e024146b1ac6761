"""Tiny models of every family (2 layers, width 32, vocab 100) for the memory tests (imported by them)."""
from __future__ import annotations

import torch

from minift.models.config import ModelConfig
from minift.models.load import build_model
from minift.models.registry import get_family

FAMILY_HEADS = {"bert": "classification", "roberta": "token-classification", "gpt2": "causal-lm",
                "gpt_neo": "causal-lm", "llama": "causal-lm"}
PEFT_OPTIONS = {"full": {}, "lora": {}, "adapter": {"size": 8}, "bitfit": {}, "prompt": {"num_virtual_tokens": 5}}


def tiny_config(model_type: str, dropout: float = 0.0, **overrides) -> ModelConfig:
    fields = {"vocab_size": 100, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
                  "max_position_embeddings": 64, "hidden_dropout": dropout, "attention_dropout": dropout,
                  "embedding_dropout": dropout}
    if model_type == "llama":
        fields.update(num_kv_heads=2, hidden_act="silu", attention_bias=True)  # biases so BitFit applies
    if model_type == "gpt_neo":
        fields.update(attention_layers=["global", "local"], window_size=4)
    fields.update(overrides)
    return ModelConfig(model_type=model_type, **fields)


def tiny_model(config: ModelConfig, head: str | None, method: str, checkpointing: bool = False):
    """A randomly initialised minift model of ``config`` with ``method`` applied, in train mode."""
    from minift.peft.apply import apply

    if head == "regression":
        config = config.with_labels(1)
    model = build_model(config, get_family(config.model_type), head)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    if method != "full":
        model = apply(model, method, **PEFT_OPTIONS[method])
    model.gradient_checkpointing = checkpointing
    return model.train()


def tiny_batch(config: ModelConfig, head: str | None, B: int = 2, T: int = 12, padded: bool = False) -> dict:
    ids = torch.randint(3, config.vocab_size, (B, T))
    ids[:, 0] = 0
    batch = {"input_ids": ids}
    if padded:
        mask = torch.ones(B, T, dtype=torch.long)
        mask[0, -3:] = 0
        batch["attention_mask"] = mask
    if head == "causal-lm":
        batch["labels"] = ids.clone()
    elif head == "classification":
        batch["labels"] = torch.randint(0, config.num_labels, (B,))
    elif head == "token-classification":
        batch["labels"] = torch.randint(0, config.num_labels, (B, T))
    elif head == "regression":
        batch["labels"] = torch.rand(B)
    return batch

