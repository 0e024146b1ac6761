"""Evaluate a causal-LM classification task by generating: greedy decoding of a few tokens after each prompt,
then parsing the label word out of the generated text (``parse_label``).

Batches are right-padded and decoded without a KV cache: each step runs the whole padded batch, reads the
logits at every row's own last token and writes the new token right after it. Causal attention keeps the
padding to the right of a row invisible to it, so every position scheme (GPT-2's absolute positions too)
sees exactly what it would see unpadded. Label words are a few tokens, so the recomputation is cheap.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tokenizers import Tokenizer

from minift.data.encode import encode_causal_lm, parse_label
from minift.data.example import Example, Task
from minift.data.tokenizer import SpecialIds, special_ids


@torch.no_grad()
def greedy_generate(model: Callable[..., torch.Tensor], prompts: Sequence[Sequence[int]], pad_id: int,
                    eos_id: int | None, max_new_tokens: int, batch_size: int = 16,
                    device: torch.device | str | None = None) -> list[list[int]]:
    """Greedy continuations of token-id prompts.

    Args:
        model: ``model(input_ids=(B, T), attention_mask=(B, T)) -> (B, T, V)`` logits (a minift causal-LM
            ``TaskModel``); the caller puts it in eval mode.
        prompts: token ids of each prompt (non-empty).
        pad_id / eos_id: padding id; generation of a row stops after ``eos_id`` (None: never early).
        max_new_tokens: tokens generated at most per prompt.
        batch_size: prompts per forward pass.
        device: where to run (default: the model's first parameter's device, else CPU).

    Returns:
        The generated ids of each prompt (eos included when produced), in order.
    """
    if device is None:
        first = next(iter(getattr(model, "parameters", lambda: iter(()))()), None)
        device = first.device if first is not None else "cpu"
    results: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start:start + batch_size]]
        if any(not p for p in chunk):
            raise ValueError("every prompt needs at least one token")
        lengths = torch.tensor([len(p) for p in chunk], device=device)  # (B,)
        B, T = len(chunk), int(lengths.max()) + max_new_tokens
        ids = torch.full((B, T), pad_id, dtype=torch.long, device=device)  # (B, T)
        for row, p in enumerate(chunk):
            ids[row, : len(p)] = torch.tensor(p, dtype=torch.long)
        positions = torch.arange(T, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        generated = [[] for _ in range(B)]
        for _ in range(max_new_tokens):
            width = int(lengths.max())
            mask = (positions[:width].unsqueeze(0) < lengths.unsqueeze(1)).long()  # (B, width)
            logits = model(input_ids=ids[:, :width], attention_mask=mask)  # (B, width, V)
            rows = torch.arange(B, device=device)
            next_ids = logits[rows, lengths - 1].argmax(dim=-1)  # (B,)
            for row in (~done).nonzero().flatten().tolist():
                generated[row].append(int(next_ids[row]))
            ids[rows[~done], lengths[~done]] = next_ids[~done]
            lengths = lengths + (~done).long()
            if eos_id is not None:
                done = done | (next_ids == eos_id)
            if bool(done.all()):
                break
        results.extend(generated)
    return results


def generate_label_ids(model: Callable[..., torch.Tensor], task: Task, examples: Sequence[Example],
                       tokenizer: Tokenizer, special: SpecialIds | None = None, max_length: int | None = 256,
                       batch_size: int = 16, device: torch.device | str | None = None) -> list[int]:
    """Class ids predicted by generating after each prompt of a causal-LM task (-1 where no label word
    appears in the generated text); score them with ``compute_metrics(task, ids, labels)``.

    Generation stops at eos or after as many tokens as the longest label word needs, plus one.
    """
    special = special or special_ids(tokenizer)
    features = encode_causal_lm(task, examples, tokenizer, max_length, special, with_target=False)
    longest = max(len(tokenizer.encode(" " + w, add_special_tokens=False).ids) for w in task.label_words)
    generated = greedy_generate(model, [f["input_ids"] for f in features], special.pad, special.eos,
                                longest + 1, batch_size, device)
    return [parse_label(tokenizer.decode(ids, skip_special_tokens=True), task.label_words) for ids in generated]
