"""Greedy decoding for causal-LM ``TaskModel``s (no KV cache: each step re-runs the whole sequence).

Simple and exact rather than fast: every step calls ``model(input_ids, attention_mask)`` on the sequence so
far, so it works for every decoder family and for PEFT-wrapped models alike.  Batches may be left- or
right-padded (the mask says which positions are real): each row's new token is appended right after its own
last real token, so right-padded rows are first compacted to left padding.  Padding shifts absolute
positions (GPT-2 / GPT-Neo learned positions; RoPE is relative and unaffected), exactly as
``transformers.generate`` without ``position_ids`` would; pass unpadded rows when that matters.
"""

from __future__ import annotations

import torch
from torch import nn


def _left_align(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens to the right end (left padding), keeping their order. Shapes (B, T)."""
    keep = attention_mask.bool()
    order = torch.argsort(keep.to(torch.int8), dim=1, stable=True)  # pads first, then real tokens in order
    return input_ids.gather(1, order).masked_fill(~keep.gather(1, order), pad_id), keep.gather(1, order).long()


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
        (B, T + n) ids: the (left-aligned) prompts, then the n <= max_new_tokens new tokens (``out[:, T:]``); the
        loop stops early once every row has produced an EOS.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    pad_id = eos[0] if eos else 0
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}")
    ids, mask = _left_align(input_ids, attention_mask, pad_id)
    was_training = model.training
    model.eval()
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    try:
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=mask)  # (B, T, V)
            if logits.dim() != 3:
                raise ValueError(f"greedy_generate needs (B, T, V) LM logits, the model returned "
                                 f"{tuple(logits.shape)}; load it with head='causal-lm'")
            next_ids = logits[:, -1].argmax(dim=-1)  # (B,)
            next_ids = next_ids.masked_fill(finished, pad_id)
            ids = torch.cat([ids, next_ids[:, None]], dim=1)  # (B, T+1)
            mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
            if eos:
                finished |= torch.isin(next_ids, torch.tensor(eos, device=ids.device))
                if bool(finished.all()):
                    break
    finally:
        model.train(was_training)
    return ids
