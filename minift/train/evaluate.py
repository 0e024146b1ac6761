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

from minift.data.example import IGNORE_INDEX
from minift.models.generate import greedy_generate
from minift.train.loop import autocast, model_inputs


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
        inputs = model_inputs(batch, device)
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
                keep = row_gold != IGNORE_INDEX
                predictions.append(row_tags[keep].tolist())
                labels.append(row_gold[keep].tolist())
        else:
            raise ValueError(f"predict() does not handle task kind {kind!r}; causal-LM uses generate_labels()")
    model.train(was_training)
    return predictions, labels


@torch.no_grad()
def generate_labels(model: nn.Module, batches: Sequence[dict], decode: Callable[[list], str],
                    parse: Callable[[str], int], max_new_tokens: int, eos_id: int | None,
                    precision: str, device: torch.device) -> tuple:
    """(predicted class ids, gold class ids) for a causal-LM classification task by generating the label.

    Greedy decoding is ``minift.models.generate.greedy_generate`` (under the run's autocast); each row's new
    tokens up to its EOS are decoded and parsed back to a class id (-1: no label word).
    """
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    for batch in batches:
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # (B, T)
        with autocast(precision, device):
            new = greedy_generate(model, ids, max_new_tokens, eos_token_id=eos_id, attention_mask=mask)
        for tokens in new[:, ids.shape[1]:].tolist():  # (B, n) new tokens per row
            if eos_id is not None and eos_id in tokens:
                tokens = tokens[:tokens.index(eos_id)]
            predictions.append(parse(decode(tokens)))
        labels += batch["labels"].tolist()
    model.train(was_training)
    return predictions, labels
