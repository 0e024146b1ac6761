"""Batches from features: dynamic padding to the longest sequence of the batch.

Which features go into a batch (seeded, length-grouped, sharded across processes) is
``minift.train.batching.BatchPlan``'s job."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from minift.data.example import IGNORE_INDEX


def collate(features: Sequence[dict], pad_id: int, padding_side: str = "right",
            pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Pad features into a batch.

    Args:
        features: dicts with ``input_ids`` (list of ints), optionally ``token_type_ids`` (BERT) or
            ``position_ids`` and ``segment_ids`` (packed sequences, ``minift.data.pack``), and ``labels`` (an
            int, a float, or a list of ints aligned with ``input_ids``). Other keys are ignored.
        pad_id: the tokenizer's pad id (``special_ids(tokenizer).pad``).
        padding_side: "right" (training, classification) or "left" (prompts for generation).
        pad_to_multiple_of: round the padded length up to a multiple of this (tensor-core friendly).

    Returns:
        ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long 1/0, ``token_type_ids`` / ``position_ids`` /
        ``segment_ids`` (B, T) long (0 on padding) when the features have them, ``labels``: (B,) long for
        classes, (B,) float for regression, (B, T) long with ``IGNORE_INDEX`` on padding for per-token labels.
    """
    if not features:
        raise ValueError("cannot collate an empty batch")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    T = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        T = -(-T // pad_to_multiple_of) * pad_to_multiple_of

    def pad(values: list, fill) -> list:
        filler = [fill] * (T - len(values))
        return values + filler if padding_side == "right" else filler + values

    batch = {
        "input_ids": torch.tensor([pad(list(f["input_ids"]), pad_id) for f in features], dtype=torch.long),
        "attention_mask": torch.tensor([pad([1] * len(f["input_ids"]), 0) for f in features], dtype=torch.long),
    }
    for key in ("token_type_ids", "position_ids", "segment_ids"):  # padded with 0 (segment 0: padding)
        if key in features[0]:
            batch[key] = torch.tensor([pad(list(f[key]), 0) for f in features], dtype=torch.long)
    if "labels" in features[0]:
        labels = [f["labels"] for f in features]
        if isinstance(labels[0], (list, tuple)):
            batch["labels"] = torch.tensor([pad(list(x), IGNORE_INDEX) for x in labels], dtype=torch.long)
        elif isinstance(labels[0], float):
            batch["labels"] = torch.tensor(labels, dtype=torch.float32)
        else:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
    return batch


@dataclass
class Collator:
    """``collate`` with fixed options, as a ``DataLoader(collate_fn=...)``."""

    pad_id: int  # the tokenizer's pad id
    padding_side: str = "right"  # "left" for generation prompts
    pad_to_multiple_of: int | None = None  # round T up to a multiple of this

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_id, self.padding_side, self.pad_to_multiple_of)
