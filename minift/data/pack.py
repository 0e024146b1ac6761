"""Packing: several short examples in one sequence of at most ``max_length`` tokens, so that a batch holds tokens,
not padding.

A packed feature has the examples' ``input_ids`` and ``labels`` one after another, plus

- ``position_ids``: each example's positions restart at 0, so it sees the positions it would see alone;
- ``segment_ids``: 1, 2, 3, ... per example (0 is left for padding), from which the model builds a block-diagonal
  causal mask (``minift.models.attention.build_mask(segment_ids=...)``): no token attends across examples.

The first token of every example carries ``IGNORE_INDEX``: the loss at position t predicts token t + 1, and the
last token of one example must not be trained to predict the first token of the next. With these, a packed
batch gives each example the logits and the loss it has unpacked (``tests/models/test_packing.py``).

Examples are placed first-fit in decreasing length (a fixed, order-independent packing of the whole split);
which packs form a batch is still ``minift.train.batching``'s seeded choice.
"""
from __future__ import annotations

from collections.abc import Sequence

from minift.data.example import IGNORE_INDEX


def pack(features: Sequence[dict], max_length: int) -> list[dict]:
    """Pack features (``input_ids`` and per-token ``labels``, each at most ``max_length`` long).

    Returns:
        Packed features with ``input_ids``, ``labels``, ``position_ids`` and ``segment_ids``, each at most
        ``max_length`` long; every input feature is in exactly one of them, whole.
    """
    order = sorted(range(len(features)), key=lambda i: (-len(features[i]["input_ids"]), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(features[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"feature {i} has {n} tokens, more than max_length={max_length}: truncate first")
        slot = next((b for b, free in enumerate(room) if free >= n), None)
        if slot is None:
            slot = len(bins)
            bins.append([])
            room.append(max_length)
        bins[slot].append(i)
        room[slot] -= n
    return [_join([features[i] for i in sorted(members)]) for members in bins]


def _join(features: list[dict]) -> dict:
    packed: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": [], "segment_ids": []}
    for segment, feature in enumerate(features, start=1):
        n = len(feature["input_ids"])
        packed["input_ids"] += feature["input_ids"]
        packed["labels"] += [IGNORE_INDEX, *feature["labels"][1:]]
        packed["position_ids"] += range(n)
        packed["segment_ids"] += [segment] * n
    return packed
