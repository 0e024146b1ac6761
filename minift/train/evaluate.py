"""Predictions of a model over a split, in the form ``minift.data``'s ``compute_metrics`` takes.

- classification: the argmax class per example; regression: the predicted score;
- token classification: per sequence, the argmax tag of every position whose label is not -100 (the first
  sub-token of each word), with the gold tags at the same positions;
- causal-LM: greedy generation after the prompt, parsed back to a class id by ``parse_label`` (-1: none).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from minift.train.loop import MODEL_INPUTS, autocast

IGNORE = -100


@torch.no_grad()
def predict(model: nn.Module, batches: Sequence[dict], kind: str, precision: str, device: torch.device) -> tuple:
    """(predictions, labels) over padded batches (dicts of CPU tensors with ``labels``).

    Returns:
        Two lists of equal length: ints (classification), floats (regression), or lists of ints per sequence
        (token classification).
    """
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    for batch in batches:
        inputs = {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}
        with autocast(precision, device):
            output = model(**inputs).float()  # (B, num_labels) | (B, 1) | (B, T, num_labels)
        gold = batch["labels"]
        if kind == "classification":
            predictions += output.argmax(-1).tolist()
            labels += gold.tolist()
        elif kind == "regression":
            predictions += output.reshape(-1).tolist()
            labels += gold.reshape(-1).tolist()
        elif kind == "token-classification":
            tags = output.argmax(-1).cpu()  # (B, T)
            for row_tags, row_gold in zip(tags, gold):
                keep = row_gold != IGNORE
                predictions.append(row_tags[keep].tolist())
                labels.append(row_gold[keep].tolist())
        else:
            raise ValueError(f"predict() does not handle task kind {kind!r}; causal-LM uses generate_labels()")
    model.train(was_training)
    return predictions, labels


@torch.no_grad()
def greedy_generate(model: nn.Module, batch: dict, max_new_tokens: int, eos_id: int | None, pad_id: int,
                    precision: str, device: torch.device) -> list:
    """Greedy continuation of right-padded prompts (no KV cache: the label words are a few tokens).

    Each row's next token is written at its own end, so every sequence keeps positions 0..len-1 and padding
    stays after the real tokens, where the causal mask hides it.

    Returns:
        A list (one per row) of the generated token ids, stopping at ``eos_id``.
    """
    ids = batch["input_ids"].to(device)  # (B, T)
    mask = batch["attention_mask"].to(device)  # (B, T)
    B = ids.shape[0]
    lengths = mask.sum(-1)  # (B,)
    rows = torch.arange(B, device=device)
    generated = [[] for _ in range(B)]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        pad_col = torch.full((B, 1), pad_id, dtype=ids.dtype, device=device)
        ids, mask = torch.cat([ids, pad_col], 1), torch.cat([mask, torch.zeros_like(pad_col)], 1)
        with autocast(precision, device):
            logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1])  # (B, T, V)
        next_ids = logits[rows, lengths - 1].float().argmax(-1)  # (B,)
        ids[rows, lengths] = next_ids
        mask[rows, lengths] = 1
        lengths = lengths + 1
        for i, token in enumerate(next_ids.tolist()):
            if not done[i]:
                if eos_id is not None and token == eos_id:
                    done[i] = True
                else:
                    generated[i].append(token)
        if bool(done.all()):
            break
    return generated


def generate_labels(model: nn.Module, batches: Sequence[dict], decode: Callable[[list], str],
                    parse: Callable[[str], int], max_new_tokens: int, eos_id: int | None, pad_id: int,
                    precision: str, device: torch.device) -> tuple:
    """(predicted class ids, gold class ids) for a causal-LM classification task by generating the label."""
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    for batch in batches:
        for tokens in greedy_generate(model, batch, max_new_tokens, eos_id, pad_id, precision, device):
            predictions.append(parse(decode(tokens)))
        labels += batch["labels"].tolist()
    model.train(was_training)
    return predictions, labels
