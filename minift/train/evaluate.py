"""A model's metrics on a split of encoded batches: what validation and the final test run, usable on its own.

- classification: the argmax class per example; regression: the predicted score;
- token classification: per sequence, the argmax tag of every labelled position (``IGNORE_INDEX`` elsewhere; the
  first sub-token of each word), with the gold tags at the same positions;
- causal-LM: greedy generation after each prompt (``minift.models.generate.greedy_generate``, with a KV cache),
  decoded and parsed back to a class id by ``minift.data.prompts.parse_label`` (-1: no label word, counted wrong);
- SFT: the held-out response loss, the mean cross-entropy per assistant token (``response_loss``, lower is
  better), and its ``perplexity``; :func:`answers` generates replies to look at.

Batches are dicts of CPU tensors with ``labels`` (``minift.train.batching.eval_batches``); causal-LM prompts are
right-padded without their target.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from minift.data.example import IGNORE_INDEX, Task
from minift.data.metrics import compute_metrics
from minift.data.prompts import label_word_ids, parse_label
from minift.losses import loss_sum, target_count
from minift.models.generate import greedy_generate
from minift.precision import autocast
from minift.train.step import model_inputs


def evaluate(model: nn.Module, task: Task, batches: Sequence[dict], tokenizer, eos_id: int | None, precision: str,
             device: torch.device) -> dict:
    """The task's metrics by name (``minift.data.compute_metrics``) of ``model`` over ``batches``.

    Args:
        tokenizer / eos_id: decode and end generated labels (causal-LM tasks only; see :func:`generate_labels`).
        precision: the autocast of the run (``minift.precision``).
    """
    if task.kind == "sft":
        return response_loss(model, batches, precision, device)
    if task.kind == "causal-lm":
        predictions, labels = generate_labels(model, batches, tokenizer, task.label_words, eos_id, precision, device)
    else:
        predictions, labels = predict(model, batches, task.kind, precision, device)
    return compute_metrics(task, predictions, labels)


@torch.no_grad()
def predict(model: nn.Module, batches: Sequence[dict], kind: str, precision: str, device: torch.device) -> tuple:
    """(predictions, labels) over padded batches of a classification, regression or token-classification task.

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
def generated_tokens(model: nn.Module, batches: Sequence[dict], max_new_tokens: int, eos_id: int | None,
                     precision: str, device: torch.device) -> list:
    """The new tokens greedy decoding writes after each row's prompt, up to (without) its EOS: one list per row."""
    was_training = model.training
    model.eval()
    rows = []
    for batch in batches:
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # (B, T)
        with autocast(precision, device):
            new = greedy_generate(model, ids, max_new_tokens, eos_token_id=eos_id, attention_mask=mask)
        for tokens in new[:, ids.shape[1]:].tolist():  # (B, n) new tokens per row
            rows.append(tokens[:tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens)
    model.train(was_training)
    return rows


def max_new_tokens(tokenizer, label_words: Sequence[str]) -> int:
    """The tokens generated to evaluate a causal-LM task: as many as the longest label word needs, plus one."""
    return max(len(ids) for ids in label_word_ids(tokenizer, label_words)) + 1


def generate_labels(model: nn.Module, batches: Sequence[dict], tokenizer, label_words: Sequence[str],
                    eos_id: int | None, precision: str, device: torch.device) -> tuple:
    """(predicted class ids, gold class ids) of a causal-LM classification task, by generating the label.

    Generation stops at ``eos_id`` or after as many tokens as the longest label word needs, plus one; the text is
    decoded without special tokens and parsed to the index of the label word it names (-1: none).
    """
    rows = generated_tokens(model, batches, max_new_tokens(tokenizer, label_words), eos_id, precision, device)
    predictions = [parse_label(tokenizer.decode(tokens, skip_special_tokens=True), label_words)
                   for tokens in rows]
    labels = [label for batch in batches for label in batch["labels"].tolist()]
    return predictions, labels


@torch.no_grad()
def response_loss(model: nn.Module, batches: Sequence[dict], precision: str, device: torch.device) -> dict:
    """``{"response_loss": mean cross-entropy per labelled (assistant) token, "perplexity": its exp}`` over batches
    of SFT features (``labels`` ``IGNORE_INDEX`` outside the assistant's turns)."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for batch in batches:
        with autocast(precision, device):
            logits = model(**model_inputs(batch, device))  # (B, T, V)
        total += loss_sum("sft", logits, batch["labels"].to(device)).double().cpu()
        count += target_count("sft", batch["labels"])
    model.train(was_training)
    loss = total.item() / max(count, 1)
    return {"response_loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def answers(model: nn.Module, prompts: Sequence[dict], tokenizer, eos_id: int | None, precision: str,
            device: torch.device, new_tokens: int | None = None, batch_size: int = 8, pad_id: int = 0) -> list[dict]:
    """Greedy replies to generation prompts (``minift.data.sft.encode_prompts``): each prompt's ``id``, ``prompt``
    and reference ``answer`` with the model's ``generated`` text, up to ``eos_id`` or ``new_tokens`` tokens (None:
    twice the longest reference answer, plus 8)."""
    from minift.data.collate import collate

    if new_tokens is None:
        new_tokens = 2 * max((len(tokenizer.encode(p["answer"], add_special_tokens=False).ids) for p in prompts),
                             default=0) + 8
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions:  # never past the model's positions (a soft prompt's virtual tokens hold some of them)
        longest = max((len(p["input_ids"]) for p in prompts), default=0) + getattr(model, "num_virtual_tokens", 0)
        new_tokens = max(0, min(new_tokens, positions - longest))
    rows = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        batch = collate([{"input_ids": p["input_ids"]} for p in chunk], pad_id)
        rows += generated_tokens(model, [batch], new_tokens, eos_id, precision, device)
    return [{"id": p.get("id", ""), "prompt": p["prompt"], "answer": p["answer"],
             "generated": tokenizer.decode(tokens, skip_special_tokens=True)} for p, tokens in zip(prompts, rows)]
