"""Data parallelism under ``torchrun``: the few collectives a run needs, in one place.

``torchrun --nproc_per_node N -m minift.train ...`` starts N processes with ``RANK`` / ``LOCAL_RANK`` /
``WORLD_SIZE`` set; :func:`init` joins them into a process group (nccl on CUDA, gloo on CPU). :func:`wrap` gives
each process a whole copy of the model in DDP (``--shard ddp``, the default) or 1/N of it with FSDP2
(``--shard fsdp``, ``fsdp.py``). Everything else here works the same with one process and no process group (it is
then a no-op), so the run path never asks.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def launched_world_size() -> int:
    """The number of processes ``torchrun`` started (1 without torchrun), before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its machine (0 without torchrun): the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> None:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU); nothing for a single process."""
    if launched_world_size() == 1 or is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def destroy() -> None:
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """Process 0: the one that evaluates and writes the run folder."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def collective_device() -> torch.device:
    """Where collective tensors live: the current GPU for nccl, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over all processes (``value`` itself with one process: no copy, no sync)."""
    if world_size() == 1:
        return value
    total = value.to(collective_device())
    dist.all_reduce(total)
    return total


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true on any process (the same answer on every process)."""
    return any_of(flag)[0]


def any_of(*flags: bool) -> list:
    """For each flag, whether it is true on any process: one collective for all of them."""
    if world_size() == 1:
        return [bool(f) for f in flags]
    return [bool(v) for v in all_sum(torch.tensor([float(f) for f in flags])).tolist()]


def from_main(flag: bool) -> bool:
    """Process 0's ``flag`` on every process."""
    if world_size() == 1:
        return flag
    value = torch.tensor([float(flag)], device=collective_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


def text_from_main(text: str, size: int = 4096) -> str:
    """Process 0's ``text`` (at most ``size`` bytes of UTF-8) on every process, e.g. the run folder it created."""
    if world_size() == 1:
        return text
    data = torch.zeros(size, dtype=torch.uint8)
    if is_main():
        encoded = list(text.encode("utf-8"))[:size]
        data[:len(encoded)] = torch.tensor(encoded, dtype=torch.uint8)
    data = data.to(collective_device())
    dist.broadcast(data, src=0)
    return bytes(data.cpu().tolist()).rstrip(b"\0").decode("utf-8")


def shard_mode(requested: str | None) -> str:
    """The ``--shard`` a run uses: none with one process (nothing to share), else the one asked (default ddp).
    ``none`` under torchrun is refused: every process would train its own copy on its own data."""
    from minift.train.config import TrainConfigError

    if world_size() == 1:
        return "none"
    if requested == "none":
        raise TrainConfigError(f"--shard none with {world_size()} processes: each would train alone; use --shard ddp "
                         "(a whole copy per process) or fsdp (parameters, gradients and optimizer states sharded)")
    return requested or "ddp"


def wrap(model: torch.nn.Module, device: torch.device, shard: str = "ddp", precision: str = "fp32") -> torch.nn.Module:
    """The model as the processes train it: in ``DistributedDataParallel`` (``shard="ddp"``), sharded in place by
    FSDP2 (``"fsdp"``, ``minift.train.fsdp``), or ``model`` itself with one process. Build the optimizer after."""
    if world_size() == 1 or shard == "none":
        return model
    if shard == "fsdp":
        from minift.train.fsdp import shard_model

        return shard_model(model, device, precision)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def no_sync(model: torch.nn.Module, skip: bool):
    """Gradients stay local while the block runs when ``skip`` (the micro-batches before a window's last): DDP's
    ``no_sync()``. An FSDP model reduce-scatters every micro-batch all the same (as torchtitan does): FSDP2's
    ``set_requires_gradient_sync(False)`` would keep every block's gradient whole, in fp32, until the window's last
    backward — the memory FSDP is there to save — so the window costs N - 1 more reduce-scatters instead."""
    if skip and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


def gather_objects(value) -> list:
    """``[value of process 0, value of process 1, ...]`` on every process (``[value]`` with one process): picklable
    Python values such as a shard's predictions."""
    if world_size() == 1:
        return [value]
    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out
