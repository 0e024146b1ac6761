"""A key/value cache for decoding: each layer keeps the keys and values of every token it has already seen.

Without a cache every generation step re-runs the whole sequence (T² work for T tokens); with one, a step runs
only the new token and attends over the stored keys. The decoder backbones take ``cache=KVCache(...)`` in
``forward``; each attention layer calls ``layer_cache.update(k, v)`` with the keys and values of its new tokens
and attends over what it returns.

Storage is pre-allocated: ``KVCache(num_layers, max_new_tokens)`` allocates ``(B, nkv, T + max_new_tokens, hs)``
per layer on the first write, the prompt's T tokens (batch, heads, dtype and device are taken from that first
``k``), and later steps write in place. Growing by ``torch.cat`` would copy the whole cache at every step
(quadratic memory traffic) and fragment the allocator; generation knows its final length up front, so reserving
it costs nothing extra and fails at once, not mid-run, when it does not fit. Sizing from the first write rather
than from the caller's prompt length lets a wrapper add tokens in front (a soft prompt) without the caller
knowing. Sliding-window layers keep every key too and
mask the old ones (``attention.build_mask(..., past=...)``): simple and exact, at the price of memory a rolling
buffer would save on sequences much longer than the window.
"""
from __future__ import annotations

import torch


class LayerCache:
    """The keys and values of one attention layer, ``(B, nkv, length, hs)`` each, in a pre-allocated buffer.

    Args:
        max_new_tokens: the room kept, after the tokens of the first update, for tokens to come.
    """

    def __init__(self, max_new_tokens: int) -> None:
        self.max_new_tokens = max_new_tokens
        self.length = 0  # tokens stored so far
        self.keys: torch.Tensor | None = None  # (B, nkv, capacity, hs), allocated by the first update
        self.values: torch.Tensor | None = None

    @property
    def capacity(self) -> int | None:
        """The most tokens the buffer holds (None before the first update)."""
        return None if self.keys is None else self.keys.shape[2]

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the keys and values of ``T`` new tokens after those already held.

        Args:
            k, v: ``(B, nkv, T, hs)``.

        Returns:
            Every key and value so far, ``(B, nkv, length + T, hs)`` each (views of the buffer, not copies).
        """
        B, nkv, T, hs = k.shape
        if self.keys is None:
            self.keys = k.new_empty(B, nkv, T + self.max_new_tokens, hs)
            self.values = v.new_empty(B, nkv, T + self.max_new_tokens, hs)
        end = self.length + T
        if end > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} tokens; {self.length} stored + {T} new do not fit")
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """One ``LayerCache`` per decoder layer; pass it to a decoder backbone's (or ``TaskModel``'s) ``forward``.

    Args:
        num_layers: the backbone's number of blocks (``len(model.blocks)``).
        max_new_tokens: how many tokens may follow those of the first forward (the prompt).

    A forward with ``cache`` treats its ``T`` tokens as following the ``cache.length`` tokens already held: its
    ``attention_mask`` covers all ``cache.length + T`` positions and its default positions start at
    ``cache.length``.
    """

    def __init__(self, num_layers: int, max_new_tokens: int) -> None:
        if num_layers <= 0 or max_new_tokens < 0:
            raise ValueError(f"KVCache needs num_layers > 0 and max_new_tokens >= 0, got {num_layers}, "
                             f"{max_new_tokens}")
        self.layers = [LayerCache(max_new_tokens) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        """Tokens held (the same in every layer once a forward has finished)."""
        return self.layers[0].length

    def check(self, num_layers: int, T: int) -> int:
        """Called by a backbone before a forward of ``T`` tokens: returns the number of tokens already held."""
        if len(self.layers) != num_layers:
            raise ValueError(f"KV cache was built for {len(self.layers)} layers, the model has {num_layers}")
        capacity = self.layers[0].capacity
        if capacity is not None and self.length + T > capacity:
            raise ValueError(f"KV cache holds {capacity} tokens; {self.length} stored + {T} new do not fit")
        return self.length
