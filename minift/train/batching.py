"""Which examples go into which micro-batch: seeded, length-grouped, and sharded across processes.

The plan of an epoch depends only on (seed, epoch), never on a global RNG, so ``--resume`` finds the data
position again by skipping micro-batches. Under torchrun every process builds the same plan of *global*
micro-batches (``batch_size × world_size`` examples) and takes its own contiguous shard, so a run on N
processes sees exactly the batches of a single-process run with the same global batch
(the DistributedSampler idea, without padding the data set with repeated examples).

This is minift's one length grouping (HF's ``LengthGroupedSampler`` idea, seeded per epoch and shard-aware);
:func:`eval_batches` orders evaluation batches by length.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch

# Length grouping sorts within pools of this many global batches, then shuffles the batches, so batches
# are homogeneous in length but their order stays random (the "megabatch" of HF's LengthGroupedSampler).
POOL_BATCHES = 50


def epoch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool,
                shuffle: bool = True) -> list:
    """Split ``range(len(lengths))`` into batches of at most ``batch_size`` indices for one epoch.

    Args:
        lengths: the token count of every example.
        batch_size: examples per (global) batch.
        seed, epoch: the permutation is drawn from ``torch.Generator().manual_seed(seed * 1000 + epoch)``.
        group_by_length: sort pools of ``POOL_BATCHES`` batches by length (longest first) before cutting.
        shuffle: False keeps the data order (evaluation).
    Returns:
        A list of index lists; every index appears exactly once.
    """
    n = len(lengths)
    if not shuffle:
        order = list(range(n))
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    if group_by_length:
        pool = batch_size * POOL_BATCHES
        order = [i for start in range(0, n, pool)
                 for i in sorted(order[start:start + pool], key=lambda j: -lengths[j])]
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if group_by_length:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


def shard(batch: list, rank: int, world_size: int) -> list:
    """This process's contiguous share of a global batch (sizes differ by at most one; may be empty)."""
    size, extra = divmod(len(batch), world_size)
    start = rank * size + min(rank, extra)
    return batch[start:start + size + (1 if rank < extra else 0)]


class BatchPlan:
    """The training micro-batches of every epoch for one process.

    Args:
        lengths: the token count of every training example.
        collate: turns a list of example indices into a batch dict of CPU tensors.
        batch_size: examples per micro-batch per process.
        seed, group_by_length: see :func:`epoch_order`.
        rank, world_size: this process and the number of processes.
    """

    def __init__(self, lengths: Sequence[int], collate: Callable[[list], dict], batch_size: int, seed: int,
                 group_by_length: bool = True, rank: int = 0, world_size: int = 1):
        if len(lengths) == 0:
            raise ValueError("the training split is empty")
        self.lengths, self.collate = list(lengths), collate
        self.batch_size, self.seed, self.group_by_length = batch_size, seed, group_by_length
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        """Micro-batches per epoch (the same on every process)."""
        global_batch = self.batch_size * self.world_size
        return (len(self.lengths) + global_batch - 1) // global_batch

    def epoch(self, epoch: int) -> list:
        """This process's index lists for ``epoch``. An empty shard (a last global batch smaller than the
        number of processes) is returned as ``[]``; the loop then runs a zero-weight step to stay in sync."""
        batches = epoch_order(self.lengths, self.batch_size * self.world_size, self.seed, epoch,
                              self.group_by_length)
        return [shard(b, self.rank, self.world_size) for b in batches]


def eval_batches(features: Sequence[dict], collate: Callable[[list], dict], batch_size: int) -> list:
    """Evaluation batches of ``features`` sorted by length (little padding; metrics do not depend on the order,
    predictions and labels stay paired), collated with ``collate`` (right padding: generation writes after each
    row's own end)."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    return [collate([features[i] for i in order[start:start + batch_size]])
            for start in range(0, len(order), batch_size)]
