"""Tiny real checkpoints for the training tests: a 2-layer, width-32, vocab-100 model written by transformers
into a folder, then loaded with minift (so the tests train our real model code)."""
from __future__ import annotations

from pathlib import Path

import torch

from minift.models import load_pretrained


def tiny_bert_folder(folder: Path, num_labels: int = 3, dropout: float = 0.0) -> Path:
    """A random BertForSequenceClassification (2 layers, width 32, vocab 100) saved as an HF folder."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    return Path(folder)


def tiny_llama_folder(folder: Path) -> Path:
    """A random LlamaForCausalLM (2 layers, width 32, vocab 100) saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return Path(folder)


def tiny_bert(tmp_path: Path, num_labels: int = 3, dropout: float = 0.0, head: str = "classification"):
    folder = tiny_bert_folder(tmp_path / "bert", num_labels, dropout)
    return load_pretrained(folder, head=head, num_labels=num_labels)


def tiny_llama(tmp_path: Path):
    return load_pretrained(tiny_llama_folder(tmp_path / "llama"), head="causal-lm")


def random_batch(n: int, lengths: list[int], kind: str, num_labels: int = 3, seed: int = 0) -> list[dict]:
    """``n`` single-example feature dicts with the given token lengths (cycled) and random labels."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        t = lengths[i % len(lengths)]
        ids = torch.randint(1, 100, (t,), generator=g)
        if kind == "classification":
            label = torch.randint(0, num_labels, (), generator=g)
        else:  # causal-lm: predict everything after a random prompt length
            label = ids.clone()
            label[: int(torch.randint(1, t, (), generator=g))] = -100
        rows.append({"input_ids": ids, "labels": label})
    return rows


def collate(rows: list[dict]) -> dict:
    """Right-pad a list of feature dicts into a batch (pad id 0, label -100 on padding)."""
    T = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    token_labels = rows[0]["labels"].ndim == 1
    labels = torch.full((len(rows), T), -100, dtype=torch.long) if token_labels else torch.stack(
        [r["labels"] for r in rows])
    for i, r in enumerate(rows):
        t = len(r["input_ids"])
        ids[i, :t], mask[i, :t] = r["input_ids"], 1
        if token_labels:
            labels[i, :t] = r["labels"]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


WORDS = [f"w{i}" for i in range(90)]


def tiny_cli_assets(tmp_path: Path, n_train: int = 96, n_test: int = 40, dropout: float = 0.1) -> tuple:
    """(model folder, task spec) for command-line runs: a tiny BERT with a WordPiece vocab.txt, and a CSV task
    whose label says whether the word "w7" occurs in the text (learnable, so metrics move)."""
    folder = tiny_bert_folder(tmp_path / "model", num_labels=2, dropout=dropout)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    g = torch.Generator().manual_seed(7)
    for split, n in (("train", n_train), ("dev", n_test), ("test", n_test)):
        lines = ["text,label"]
        for _ in range(n):
            length = int(torch.randint(3, 14, (), generator=g))
            words = [WORDS[int(i)] for i in torch.randint(0, 90, (length,), generator=g)]
            lines.append(f"{' '.join(words)},{int('w7' in words)}")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder, f"file:{tmp_path / 'train.csv'},{tmp_path / 'dev.csv'},{tmp_path / 'test.csv'}"


def cli_config(tmp_path: Path, name: str = "run", *, n_train: int = 64, dropout: float = 0.1, **overrides):
    """A ``TrainConfig`` of a small full fine-tuning run on :func:`tiny_cli_assets` (made once per ``tmp_path``):
    batch 8 × 2 accumulated, so 64 training examples are 8 micro-batches and 4 optimizer steps per epoch."""
    from minift.train.config import TrainConfig

    assets = tmp_path / "assets"
    if not assets.exists():
        assets.mkdir()
        tiny_cli_assets(assets, n_train=n_train, n_test=16, dropout=dropout)
    task = f"file:{assets / 'train.csv'},{assets / 'dev.csv'},{assets / 'test.csv'}"
    values = {"task": task, "model": str(assets / "model"), "method": "full", "batch_size": 8, "grad_accum": 2,
              "lr": 1e-3, "max_length": 32, "epochs": 2, "log_every": 1, "output_dir": str(tmp_path / name),
              "plot": False, "device": "cpu", **overrides}
    return TrainConfig(**values)
