"""Scaled dot-product attention and the masks every family uses.

Masks are boolean, ``True`` = may attend, broadcastable to ``(B, nh, T_q, T_k)``:

- ``padding_mask(attention_mask)`` → ``(B, 1, 1, T)`` from a ``(B, T)`` 1 (keep) / 0 (pad) mask (encoders);
- ``causal_mask(T)`` → ``(T, T)`` lower triangle; ``local_causal_mask(T, window)`` → the GPT-Neo local band
  (query i sees keys j with ``i - window < j <= i``);
- ``segment_mask(segment_ids)`` → ``(B, 1, T, T)``: a token sees only the tokens of its own segment (several
  examples packed into one sequence, ``minift.data.pack``); with the causal mask this is block-diagonal causal;
- ``build_mask(attention_mask, T, causal=..., window=..., segment_ids=...)`` combines them into ``(B, 1, T, T)``
  (or returns ``None`` when nothing is masked, so SDPA can take its fused path).

With a KV cache (generation, ``minift.models.cache``) the ``T`` queries follow ``past`` cached tokens: the masks
are then ``(T, past + T)`` with query i at position ``past + i``, and ``attention_mask`` covers all ``past + T``
keys.

``attention(q, k, v, mask, ...)`` wraps ``torch.nn.functional.scaled_dot_product_attention``: it repeats
grouped key/value heads, passes ``scale`` through (GPT-Neo uses ``scale=1.0``: its scores are unscaled) and
keeps fully masked rows (a left-padded query before any real token) finite instead of NaN. With attention dropout
on the CPU, SDPA has no fused kernel and falls back to its math path (scores, a float copy of the mask, a NaN check
of every row, ``bernoulli_`` masks); there ``attention`` computes the same product itself with the cheap masks of
``minift.models.dropout`` (issue 13).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minift.models.dropout import dropout


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` 1/0 mask → boolean ``(B, 1, 1, T)`` key mask, True where the key is a real token."""
    if attention_mask.dim() != 2:
        shape = tuple(attention_mask.shape)
        raise ValueError(f"attention_mask must be (B, T) of 1 (keep) / 0 (pad), got shape {shape}")
    return attention_mask.bool()[:, None, None, :]


def causal_mask(T: int, device: torch.device | None = None, past: int = 0) -> torch.Tensor:
    """Boolean ``(T, past + T)``: query i (at position ``past + i``) may attend to keys j <= past + i."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(diagonal=past)


def local_causal_mask(T: int, window: int, device: torch.device | None = None, past: int = 0) -> torch.Tensor:
    """Boolean ``(T, past + T)``: the query at position p = past + i may attend to keys j with
    ``p - window < j <= p`` (GPT-Neo local layers, Mistral / Qwen2 sliding windows)."""
    if window <= 0:
        raise ValueError(f"local attention window must be positive, got {window}")
    i = torch.arange(past, past + T, device=device)[:, None]
    j = torch.arange(past + T, device=device)[None, :]
    return (j <= i) & (j > i - window)


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` segment ids → boolean ``(B, 1, T, T)``, True where query and key are in the same segment."""
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids must be (B, T), got shape {tuple(segment_ids.shape)}")
    return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # (B, 1, T, T)


def build_mask(attention_mask: torch.Tensor | None, T: int, causal: bool = False, window: int | None = None,
               device: torch.device | None = None, past: int = 0,
               segment_ids: torch.Tensor | None = None) -> torch.Tensor | None:
    """Combine padding, causal and local masks.

    Args:
        attention_mask: ``(B, past + T)`` 1 (keep) / 0 (pad), or None (no padding).
        T: sequence length (of the new tokens, with a cache).
        causal: whether query i is limited to keys j <= i.
        window: local / sliding window (implies ``causal``), or None for global attention.
        past: tokens already in the KV cache, before the ``T`` new ones (0 without a cache).
        segment_ids: ``(B, T)`` packed sequences: the example (1, 2, ...; 0 for padding) of each token, which
            attends only within its example (positions restart per example: pass ``position_ids`` too).
            Not with a cache.

    Returns:
        Boolean mask broadcastable to ``(B, nh, T, past + T)``, or None when nothing would be masked and the
        plain causal flag suffices (check ``causal`` yourself then; see ``attention``).
    """
    if attention_mask is not None:
        if attention_mask.shape[-1] != past + T:
            cached = f" ({past} cached + {T} new)" if past else ""
            raise ValueError(f"attention_mask has {attention_mask.shape[-1]} positions but the input has "
                             f"{past + T}{cached}")
        device = attention_mask.device
        # No padding: let SDPA take its fused (causal) path. Only checked for CPU masks: on an accelerator the
        # check would synchronise host and device on every forward, so there the caller drops an all-ones mask
        # it already knows about on the host (minift.train does, from the CPU batch).
        if attention_mask.device.type == "cpu" and bool(attention_mask.all()):
            attention_mask = None
    if segment_ids is not None and past:
        raise ValueError("segment_ids (packed sequences) cannot be used with a KV cache")
    if window is not None:
        mask = local_causal_mask(T, window, device, past)  # (T, past + T)
    elif causal and (attention_mask is not None or segment_ids is not None or (past and T > 1)):
        # SDPA's own causal flag aligns the triangle top-left, which is wrong after cached tokens: build it.
        # (One new token may see every cached key: nothing to mask.)
        mask = causal_mask(T, device, past)  # (T, past + T)
    else:
        mask = None
    if segment_ids is not None:
        same = segment_mask(segment_ids)  # (B, 1, T, T)
        mask = same if mask is None else same & mask
    if attention_mask is not None:
        pad = padding_mask(attention_mask)  # (B, 1, 1, past + T)
        mask = pad if mask is None else pad & mask  # (B, 1, T, past + T) or (B, 1, 1, past + T)
    return mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              causal: bool = False, dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention.

    Args:
        q: ``(B, nh, T, hs)`` queries.
        k, v: ``(B, nkv, S, hs)`` keys and values; ``nkv`` divides ``nh`` (grouped-query attention); ``S = T``,
            or ``past + T`` with a KV cache.
        mask: boolean mask from ``build_mask`` (True = attend), or None.
        causal: apply a causal mask when ``mask`` is None (a mask from ``build_mask(causal=True)`` already is).
            With a cache (``S > T``) ``build_mask`` returns None only for a single query, which sees every key.
        dropout_p: attention-probability dropout (pass 0.0 in eval mode).
        scale: score scale; None → ``1 / sqrt(hs)``.

    Returns:
        ``(B, nh, T, hs)``.
    """
    nh, nkv = q.shape[1], k.shape[1]
    if nkv != nh:
        k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, T, hs)
        v = v.repeat_interleave(nh // nkv, dim=1)
    if dropout_p > 0.0 and q.device.type == "cpu" and not torch.compiler.is_compiling():
        return attention_with_dropout(q, k, v, mask, causal, dropout_p, scale)
    if mask is not None:
        # A query that may attend to nothing (all keys padded) would give NaN; let it attend everywhere instead.
        # Its output is discarded anyway (it is a padding position).
        mask = mask | ~mask.any(dim=-1, keepdim=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    if q.shape[2] != k.shape[2]:  # after cached keys
        if q.shape[2] > 1 and causal:
            raise ValueError("causal attention over cached keys needs the mask of build_mask(..., past=...)")
        causal = False  # one new query sees every key
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)


def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                           causal: bool, dropout_p: float, scale: float | None = None) -> torch.Tensor:
    """``dropout(softmax(q k^T · scale + mask)) v`` as SDPA's math path computes it, with
    ``minift.models.dropout``'s masks. Shapes as :func:`attention` (``k``/``v`` already repeated to ``nh`` heads)."""
    T, S, dtype = q.shape[2], k.shape[2], q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # In fp32, as SDPA's math path computes bf16 / fp16 inputs on the CPU (autocast would cast them back down)
    compute = torch.promote_types(dtype, torch.float32)  # bf16 / fp16 → fp32; fp32 and fp64 stay
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = q.to(compute), k.to(compute), v.to(compute)
        scores = torch.matmul(q * scale, k.transpose(-2, -1))  # (B, nh, T, S)
        if mask is None and causal and T > 1:
            mask = causal_mask(T, q.device, past=S - T)  # (T, S)
        if mask is not None:
            # a row with no key at all would be NaN: let it attend everywhere (as attention does; it is padding)
            mask = mask | ~mask.any(dim=-1, keepdim=True)
            # an additive 0 / -inf bias broadcasts 5x faster on the CPU than masked_fill_ with a broadcast mask
            bias = torch.zeros(mask.shape, dtype=scores.dtype, device=q.device).masked_fill_(~mask, -math.inf)
            scores = scores.add_(bias)
        probs = dropout(torch.softmax(scores, dim=-1), dropout_p)  # (B, nh, T, S)
        return torch.matmul(probs, v).to(dtype)  # (B, nh, T, hs)
