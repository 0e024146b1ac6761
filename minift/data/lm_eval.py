"""Evaluate a causal-LM classification task by generating: greedy decoding of a few tokens after each prompt
(``minift.models.generate.greedy_generate``), then parsing the label word out of the generated text."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenizers import Tokenizer

from minift.data.collate import collate
from minift.data.encode import encode_causal_lm, parse_label
from minift.data.example import Example, Task
from minift.data.tokenizer import SpecialIds, special_ids


def generate_label_ids(model: torch.nn.Module, task: Task, examples: Sequence[Example], tokenizer: Tokenizer,
                       special: SpecialIds | None = None, max_length: int | None = 256, batch_size: int = 16,
                       device: torch.device | str | None = None) -> list[int]:
    """Class ids predicted by generating after each prompt of a causal-LM task.

    Args:
        model: a decoder returning ``(B, T, V)`` logits from ``model(input_ids=, attention_mask=)``; the
            caller puts it in eval mode.
        task: a causal-LM task (its prompt and label words).
        examples: the examples to predict.
        tokenizer / special: the model's tokenizer and special ids (eos ends generation).
        max_length: longest prompt in tokens (longer ones lose their beginning).
        batch_size: prompts per generation batch.
        device: where the batches go (default: the model's first parameter's device).

    Returns:
        One class id per example, -1 where the generated text names no label word (counted wrong by
        ``compute_metrics(task, ids, labels)``). Generation stops at eos or after as many tokens as the
        longest label word needs, plus one.
    """
    from minift.models.generate import greedy_generate  # lazily: minift.data does not need the models otherwise

    special = special or special_ids(tokenizer)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else "cpu"
    features = encode_causal_lm(task, examples, tokenizer, max_length, special, with_target=False)
    longest = max(len(tokenizer.encode(" " + w, add_special_tokens=False).ids) for w in task.label_words)
    predictions = []
    for start in range(0, len(features), batch_size):
        batch = collate(features[start:start + batch_size], special.pad)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # (B, T)
        new = greedy_generate(model, ids, longest + 1, eos_token_id=special.eos, attention_mask=mask)[:, ids.shape[1]:]
        for row in new.tolist():
            if special.eos in row:
                row = row[: row.index(special.eos)]
            predictions.append(parse_label(tokenizer.decode(row, skip_special_tokens=True), task.label_words))
    return predictions
