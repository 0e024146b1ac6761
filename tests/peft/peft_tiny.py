"""Test helpers: tiny random transformers checkpoints of every family (2 layers, width 32, vocab 100), saved with safetensors.

``make_tiny(tmp_path, family, head, **config_overrides)`` returns ``Tiny(hf, folder, load)``: the transformers model, its
folder, and ``load()`` giving a fresh minift model of it (eval mode), so a test can reload the base model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minift.models import load_pretrained

VOCAB, T = 100, 10
FAMILIES = ("bert", "roberta", "gpt2", "gpt_neo", "llama")
ENCODERS = ("bert", "roberta")


_CONFIGS = {
    "bert": ("BertConfig", {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 64, "max_position_embeddings": 64, "type_vocab_size": 2,
                            "pad_token_id": 0}),
    "roberta": ("RobertaConfig", {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
                                  "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 66,
                                  "type_vocab_size": 1, "pad_token_id": 1}),
    "gpt2": ("GPT2Config", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64,
                            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
    "gpt_neo": ("GPTNeoConfig", {"vocab_size": VOCAB, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
                                 "max_position_embeddings": 64, "attention_types": [[["global", "local"], 1]],
                                 "window_size": 4, "pad_token_id": 0, "intermediate_size": 64, "bos_token_id": 1,
                                 "eos_token_id": 2}),
    "llama": ("LlamaConfig", {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                              "max_position_embeddings": 64, "pad_token_id": 0}),
}


def hf_config(family: str, **overrides):
    """The transformers config of a tiny ``family`` model (2 layers, width 32, vocab 100)."""
    cls, kwargs = _CONFIGS[family]
    return getattr(transformers, cls)(**{**kwargs, **overrides})


_CLASSES = {
    ("bert", "classification"): "BertForSequenceClassification",
    ("bert", "token-classification"): "BertForTokenClassification",
    ("roberta", "classification"): "RobertaForSequenceClassification",
    ("roberta", "token-classification"): "RobertaForTokenClassification",
    ("gpt2", "classification"): "GPT2ForSequenceClassification",
    ("gpt2", "causal-lm"): "GPT2LMHeadModel",
    ("gpt_neo", "classification"): "GPTNeoForSequenceClassification",
    ("gpt_neo", "causal-lm"): "GPTNeoForCausalLM",
    ("llama", "classification"): "LlamaForSequenceClassification",
    ("llama", "causal-lm"): "LlamaForCausalLM",
}


@dataclass
class Tiny:
    hf: torch.nn.Module  # the transformers model (eval mode)
    folder: Path  # its safetensors folder
    head: str  # the minift head kind
    load: Callable[[], torch.nn.Module]  # a fresh minift model of the folder


def make_tiny(tmp_path: Path, family: str, head: str, num_labels: int = 3, **overrides) -> Tiny:
    config = hf_config(family, num_labels=num_labels, **overrides)
    hf = getattr(transformers, _CLASSES[(family, head)])(config)
    with torch.no_grad():  # random, non-trivial heads (transformers' init is tiny)
        for name, p in hf.named_parameters():
            if name.startswith(("classifier", "score")):
                p.normal_(0, 0.5)
    folder = tmp_path / f"{family}-{head}"
    hf.save_pretrained(folder, safe_serialization=True)
    hf.eval()

    def load():
        return load_pretrained(folder, head=head)

    return Tiny(hf, folder, head, load)


def batch(family: str, B: int = 3, pad_rows: bool = True) -> dict[str, torch.Tensor]:
    """Right-padded batch; encoders start each row with a [CLS]-like id 2 (``<s>`` / [CLS] role)."""
    ids = torch.randint(4, VOCAB, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    if pad_rows:
        mask[1, 7:] = 0
        mask[2, 5:] = 0
    pad = 1 if family == "roberta" else 0
    ids = ids.masked_fill(mask == 0, pad)
    if family in ENCODERS:
        ids[:, 0] = 2
    return {"input_ids": ids, "attention_mask": mask}
