"""Per-GPU memory of data-parallel training: ``torchrun --nproc_per_node N -m minift.train --shard ddp|fsdp``.

**DDP** (``--shard ddp``, the default): every GPU holds the whole model, its gradients and optimizer states, as one
GPU does, plus the reducer's gradient buckets: ``DistributedDataParallel`` allocates flat buckets (25 MiB each by
default) covering every trainable parameter when it wraps the model, and keeps them for the run — one more copy of
the gradients (PyTorch's DDP notes: ``gradient_as_bucket_view=True``, which minift does not set, would save "the
total gradients size").

**FSDP** (``--shard fsdp``, PyTorch's FSDP2 ``fully_shard``, as ``minift.train.fsdp.shard_model`` wraps a model:
each block one unit, then the root with the embeddings, final norm, head and soft prompt):

- every parameter is split on dim 0 by ``torch.chunk`` (``Shard(0)``), so GPU 0 holds ``ceil(d0 / N)`` rows of
  each: the largest share, which is what is counted; its gradients (reduce-scattered after every micro-batch) and
  AdamW states are of that share too;
- a 4-bit base's NF4 codes and scales are buffers, which FSDP2 does not shard: they are whole on every GPU;
- a unit's parameters are all-gathered whole in the gather dtype (the autocast dtype under ``--precision bf16`` /
  ``fp16``, else the parameters' own) for its forward and again for its backward, then freed. FSDP2 prefetches
  the next unit's all-gather while one computes (implicitly in forward, explicitly one unit ahead in backward),
  so two blocks are gathered at once; the root's parameters stay gathered from its forward to the end of backward
  (FSDP2 does not reshard the root after forward);
- in backward a block's gradients come out whole in the gather dtype and are copied into a reduce-scatter input
  in the reduce dtype (fp32 under mixed precision) before they are sharded: one block's worth of both; the root's
  gradients (a trainable embedding or head) stay whole until the root's reduce-scatter at the end of backward;
- autocast makes no weight copies: the gathered parameters are already in its dtype.

Not counted: the all-gather's flat output buffer, which lives for its copy-out only, and communication workspaces
(NCCL's own, outside the caching allocator). Activations per GPU are those of its own micro-batch
(``--batch-size`` is per process), as under autocast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

SHARDS = ("ddp", "fsdp")


@dataclass(frozen=True)
class Units:
    """A model's FSDP2 units and GPU 0's share of them (elements), read off the model as built."""

    gpus: int
    blocks: tuple[int, ...]  # parameter elements of each block, whole (what its all-gather brings)
    block_trainable: tuple[int, ...]  # trainable elements of each block, whole (its unsharded gradients)
    root: int  # parameter elements outside the blocks: embeddings, final norm, head, soft prompt
    root_trainable: int  # trainable elements of the root, whole
    shard: int  # elements GPU 0 holds of every parameter
    trainable_shard: int  # of every trainable parameter
    largest_trainable_shard: int  # of the largest trainable parameter (a per-tensor optimizer step's unit)
    block_trainable_shard: tuple[int, ...]  # of each block's trainable parameters

    @property
    def largest_block(self) -> int:
        return max(self.blocks, default=0)

    @property
    def largest_block_trainable(self) -> int:
        return max(self.block_trainable, default=0)


def first_share(param: nn.Parameter, gpus: int) -> int:
    """Elements of ``param`` that GPU 0 holds under ``Shard(0)``: ``torch.chunk``'s first chunk of dim 0."""
    if param.ndim == 0:
        return param.numel()
    rows = param.shape[0]
    return math.ceil(rows / gpus) * (param.numel() // rows if rows else 0)


def fsdp_units(model: nn.Module, gpus: int) -> Units:
    """The units ``minift.train.fsdp.shard_model`` makes of ``model`` (each of ``model.blocks``, then the root) on
    ``gpus`` GPUs. Parameters only: buffers (a 4-bit base's codes) are not sharded. A tied weight counts once."""
    params = list(model.parameters())
    in_blocks = set()
    blocks, block_trainable, block_shard = [], [], []
    for block in model.blocks:
        own = list(block.parameters())
        in_blocks.update(id(p) for p in own)
        blocks.append(sum(p.numel() for p in own))
        block_trainable.append(sum(p.numel() for p in own if p.requires_grad))
        block_shard.append(sum(first_share(p, gpus) for p in own if p.requires_grad))
    root = [p for p in params if id(p) not in in_blocks]
    trainable = [p for p in params if p.requires_grad]
    return Units(gpus=gpus, blocks=tuple(blocks), block_trainable=tuple(block_trainable),
                 root=sum(p.numel() for p in root), root_trainable=sum(p.numel() for p in root if p.requires_grad),
                 shard=sum(first_share(p, gpus) for p in params),
                 trainable_shard=sum(first_share(p, gpus) for p in trainable),
                 largest_trainable_shard=max((first_share(p, gpus) for p in trainable), default=0),
                 block_trainable_shard=tuple(block_shard))


def gathered_bytes(units: Units, gather_itemsize: int, reduce_itemsize: int) -> dict[str, int]:
    """Whole parameters alive on a GPU at once under FSDP2 (bytes): in forward the root's and two blocks' (the one
    running and the next, prefetched); in backward also one block's whole gradients in the gather dtype and their
    reduce-scatter input in the reduce dtype."""
    params = (units.root + min(2, len(units.blocks)) * units.largest_block) * gather_itemsize
    grads = units.largest_block_trainable * (gather_itemsize + reduce_itemsize)
    return {"forward": params, "backward": params + grads}
