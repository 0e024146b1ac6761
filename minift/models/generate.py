"""Greedy decoding for causal-LM ``TaskModel``s (no KV cache: each step re-runs the sequence so far).

Simple and exact rather than fast: every step calls ``model(input_ids, attention_mask)``, so it works for
every decoder family and for PEFT-wrapped models alike.  Prompts may be left- or right-padded (the mask says
which positions are real).  Internally each row's real tokens are packed to the left, so they sit at
positions 0..len-1 whatever the padding (learned absolute positions of GPT-2 / GPT-Neo stay right, as with
transformers' position ids from the mask), and each new token is written right after its row's last token;
the padding that follows is masked and, attention being causal, never seen by real tokens.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def greedy_generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Append up to ``max_new_tokens`` argmax tokens to each row.

    Args:
        model: a decoder ``TaskModel`` returning ``(B, T, V)`` logits (causal-lm head or bare decoder).
        input_ids: (B, T) prompt ids.
        max_new_tokens: how many tokens to add at most (>= 0).
        eos_token_id: id(s) that end a row; a finished row is then filled with the first of them.
        attention_mask: (B, T) 1 (real) / 0 (pad), or None (no padding).

    Returns:
        (B, T + n): ``input_ids`` unchanged, then the n <= max_new_tokens new tokens of each row
        (``out[:, T:]``); the loop stops early once every row has produced an EOS.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    fill = eos[0] if eos else 0
    B, T = input_ids.shape
    keep = attention_mask.bool()
    lengths = keep.sum(dim=1)  # (B,)
    if bool((lengths == 0).any()):
        raise ValueError("a row of attention_mask is all 0: every prompt needs at least one real token")
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
    ids = torch.full((B, T + max_new_tokens), fill, dtype=input_ids.dtype, device=input_ids.device)
    ids[:, :T] = input_ids.gather(1, order).masked_fill(~keep.gather(1, order), fill)  # (B, T+n), packed left
    rows = torch.arange(B, device=ids.device)
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    new_tokens = []
    was_training = model.training
    model.eval()
    try:
        for step in range(max_new_tokens):
            end = int(lengths.max()) + step  # longest row so far
            positions = torch.arange(end, device=ids.device)  # (end,)
            mask = (positions[None, :] < (lengths + step)[:, None]).long()  # (B, end)
            logits = model(input_ids=ids[:, :end], attention_mask=mask)  # (B, end, V)
            if logits.dim() != 3:
                raise ValueError(f"greedy_generate needs (B, T, V) LM logits, the model returned "
                                 f"{tuple(logits.shape)}; load it with head='causal-lm'")
            next_ids = logits[rows, lengths + step - 1].argmax(dim=-1).masked_fill(finished, fill)  # (B,)
            ids[rows, lengths + step] = next_ids
            new_tokens.append(next_ids)
            if eos:
                finished |= torch.isin(next_ids, torch.tensor(eos, device=ids.device))
                if bool(finished.all()):
                    break
    finally:
        model.train(was_training)
    if not new_tokens:
        return input_ids.clone()
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)
