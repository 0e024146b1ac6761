"""Atomic, pickle-free training checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step-<N>/`` holding

- ``trainable.safetensors`` — the parameters that train (the frozen base is reloaded from the model path),
- ``optimizer.safetensors`` — every optimizer state tensor, flattened as ``state.<param index>.<name>``,
- ``rng-rank<R>.safetensors`` — the torch CPU/CUDA generator states (uint8) and numpy's key, per process,
- ``state.json`` — the rest: optimizer param groups and scalar states, scheduler, GradScaler, python RNG,
  and the loop's position (epoch, micro-batch, step, best metric, ...).

Nothing is pickled, so loading a checkpoint cannot run code. Each file is written to a temporary name in the
same folder, fsync'ed and ``os.replace``'d; the folder is assembled as ``step-<N>.tmp`` and renamed, then
``latest.json`` is replaced atomically to point at it, so a crash at any moment leaves the previous
checkpoint usable.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import nn

LATEST = "latest.json"


class CheckpointLoadError(ValueError):
    """A checkpoint folder that is missing files or does not match the model/optimizer being resumed."""


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2).encode("utf-8"))


def atomic_save_tensors(tensors: dict, path, metadata: dict | None = None) -> None:
    """Save a name → tensor dict as safetensors, atomically (tensors are copied to contiguous CPU memory)."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write_bytes(path, st_save(cpu, metadata=metadata))


def trainable_state(model: nn.Module) -> dict:
    """Name → tensor of every parameter with ``requires_grad`` (tied parameters once)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, tensors: dict, source: str) -> None:
    """Copy saved trainable tensors into ``model`` in place; the names must match exactly."""
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointLoadError(f"{source} does not match the model's trainable parameters: missing {missing[:8]}"
                                  f", unexpected {unexpected[:8]}; resume with the same model, method and options")
    with torch.no_grad():
        for name, value in tensors.items():
            if params[name].shape != value.shape:
                raise CheckpointLoadError(f"{source}: {name} has shape {tuple(value.shape)}, "
                                          f"the model has {tuple(params[name].shape)}")
            params[name].copy_(value)


# --- optimizer state without pickle ---------------------------------------------------------------------------

def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple:
    """(tensors, json-able dict) holding ``optimizer.state_dict()`` exactly."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict, info: dict) -> dict:
    """The inverse of :func:`flatten_optimizer`: a dict for ``optimizer.load_state_dict``."""
    state: dict = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entries in info["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in info["param_groups"]]
    return {"state": state, "param_groups": groups}


# --- RNG states ------------------------------------------------------------------------------------------------

def capture_rng() -> tuple:
    """(tensors, json-able dict) of the torch, CUDA, numpy and python generator states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy.key"] = torch.from_numpy(np_state[1].astype(np.int64))
    py_version, py_key, py_gauss = random.getstate()
    info = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py_version, list(py_key), py_gauss]}
    return tensors, info


def restore_rng(tensors: dict, info: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((name, tensors["numpy.key"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, key, gauss = info["python"]
    random.setstate((version, tuple(key), gauss))


# --- whole checkpoints -----------------------------------------------------------------------------------------

def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(folder, model: nn.Module, optimizer, scheduler, scaler, loop_state: dict, keep: int = 1) -> Path:
    """Write a resumable checkpoint under ``folder`` (a run's ``checkpoints/``) and point ``latest.json`` at it.

    Called on every process under torchrun: each writes its RNG state, process 0 writes the rest.

    Args:
        model: the unwrapped model (not the DDP wrapper).
        loop_state: JSON-able position of the loop; must hold ``"step"``.
        keep: how many checkpoints to keep (older ones are deleted after the new one is in place).
    Returns:
        The checkpoint folder.
    """
    folder = Path(folder)
    step = int(loop_state["step"])
    final = folder / f"step-{step}"
    tmp = folder / f"step-{step}.tmp"
    if _rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    rng_tensors, rng_info = capture_rng()
    atomic_save_tensors(rng_tensors, tmp / f"rng-rank{_rank()}.safetensors")
    atomic_write_json(tmp / f"rng-rank{_rank()}.json", rng_info)
    _barrier()
    if _rank() == 0:
        opt_tensors, opt_info = flatten_optimizer(optimizer)
        atomic_save_tensors(trainable_state(model), tmp / "trainable.safetensors")
        atomic_save_tensors(opt_tensors, tmp / "optimizer.safetensors")
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        atomic_write_json(tmp / "state.json", {"optimizer": opt_info, "scheduler": sched,
                                               "scaler": scaler.state_dict() if scaler is not None else {},
                                               "loop": loop_state})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(folder)
        atomic_write_json(folder / LATEST, {"checkpoint": final.name, "step": step})
        old = sorted((p for p in folder.glob("step-*") if p.is_dir() and p != final and not p.name.endswith(".tmp")),
                     key=lambda p: int(p.name.split("-")[1]))
        for path in old[:max(0, len(old) - (keep - 1))]:
            shutil.rmtree(path, ignore_errors=True)
    _barrier()
    return final


def find_checkpoint(path) -> Path:
    """The checkpoint folder for ``--resume PATH``: a run folder, its ``checkpoints/`` or a ``step-N`` folder."""
    path = Path(path)
    for candidate in (path, path / "checkpoints"):
        if (candidate / "state.json").is_file():
            return candidate
        latest = candidate / LATEST
        if latest.is_file():
            return candidate / json.loads(latest.read_text())["checkpoint"]
    raise CheckpointLoadError(f"no checkpoint found at {path}: pass the run folder of an earlier run "
                              f"(it holds checkpoints/{LATEST}), or a checkpoints/step-N folder")


def load_checkpoint(path, model: nn.Module, optimizer, scheduler, scaler) -> dict:
    """Restore model, optimizer, scheduler, scaler and this process's RNG from a checkpoint.

    Returns:
        The saved loop state (epoch, micro-batch position, step, best metric, ...).
    """
    folder = find_checkpoint(path)
    try:
        state = json.loads((folder / "state.json").read_text())
        trainable = load_file(folder / "trainable.safetensors")
        opt_tensors = load_file(folder / "optimizer.safetensors")
    except (OSError, ValueError) as err:
        raise CheckpointLoadError(f"checkpoint {folder} is incomplete or corrupt ({err}); resume from another one")
    rng_file = folder / f"rng-rank{_rank()}.safetensors"
    saved_world = len(list(folder.glob("rng-rank*.safetensors")))  # one RNG file per process that wrote it
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if not rng_file.is_file() or saved_world != world:
        raise CheckpointLoadError(f"{folder} was written by {saved_world} process(es), this run has {world}: resume "
                                  "with the same number of processes (the data shards and order depend on it)")
    load_trainable_state(model, trainable, str(folder / "trainable.safetensors"))
    device = next(model.parameters()).device
    opt_tensors = {k: (v if k.endswith(".step") else v.to(device)) for k, v in opt_tensors.items()}
    try:
        optimizer.load_state_dict(unflatten_optimizer(opt_tensors, state["optimizer"]))
    except ValueError as err:
        raise CheckpointLoadError(f"{folder}: the optimizer state does not fit ({err}); "
                                  "resume with the same method and options") from None
    scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    restore_rng(st_load(rng_file.read_bytes()), json.loads((folder / f"rng-rank{_rank()}.json").read_text()))
    return state["loop"]
