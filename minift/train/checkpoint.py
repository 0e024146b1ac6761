"""Atomic, pickle-free training checkpoints, and the run's best weights.

A checkpoint is a folder ``<run>/checkpoints/step-<N>/`` holding

- ``trainable.safetensors`` — the parameters that train (``minift.peft.io.trainable_state``: everything with
  ``requires_grad``, so all of them under full fine-tuning; the frozen base is reloaded from the model path),
- ``optimizer.safetensors`` — every optimizer state tensor, flattened as ``state.<param index>.<name>``,
- ``rng-rank<R>.safetensors`` — the torch CPU/CUDA generator states (uint8) and numpy's key, per process,
- ``state.json`` — the rest: optimizer param groups and scalar states, scheduler, GradScaler, python RNG,
  and the loop's position (epoch, micro-batch, step, best metric, ...).

Nothing is pickled, so loading a checkpoint cannot run code. Each file is written to a temporary name in the
same folder, fsync'ed and ``os.replace``'d; the folder is assembled as ``step-<N>.tmp`` and renamed, then
``latest.json`` is replaced atomically to point at it, so a crash at any moment leaves the previous
checkpoint usable.

The best weights are written once per improvement in their final format — a ``minift.peft.save_trainable`` folder
for a PEFT method, a ``minift.models.save_pretrained`` folder for full fine-tuning — by :func:`save_weights`,
which assembles ``best.tmp/`` and renames it into place; :func:`load_weights` reads them back into the model.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import nn

from minift.peft.io import load_trainable_state, trainable_state
from minift.train.distributed import barrier, rank, world_size

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
    if rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    rng_tensors, rng_info = capture_rng()
    atomic_save_tensors(rng_tensors, tmp / f"rng-rank{rank()}.safetensors")
    atomic_write_json(tmp / f"rng-rank{rank()}.json", rng_info)
    barrier()
    if rank() == 0:
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
    barrier()
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
        raise CheckpointLoadError(f"checkpoint {folder} is incomplete or corrupt ({err}); resume from another "
                                  "one") from None
    rng_file = folder / f"rng-rank{rank()}.safetensors"
    saved_world = len(list(folder.glob("rng-rank*.safetensors")))  # one RNG file per process that wrote it
    if not rng_file.is_file() or saved_world != world_size():
        raise CheckpointLoadError(f"{folder} was written by {saved_world} process(es), this run has {world_size()}: "
                                  "resume with the same number of processes (the data shards and order depend on it)")
    try:
        load_trainable_state(model, trainable, str(folder / "trainable.safetensors"))
    except ValueError as err:
        raise CheckpointLoadError(f"{err} Resume with the same model, method and options") from None
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
    restore_rng(st_load(rng_file.read_bytes()), json.loads((folder / f"rng-rank{rank()}.json").read_text()))
    return state["loop"]


# --- the best weights, in their final format -------------------------------------------------------------------

def save_weights(model: nn.Module, folder) -> Path:
    """Write what a run delivers to ``folder``, atomically: the ``minift.peft.save_trainable`` folder of a PEFT
    model, else (full fine-tuning) a ``minift.models.save_pretrained`` folder that transformers loads.

    The folder is assembled as ``<folder>.tmp`` and renamed into place; the previous one is moved aside to
    ``<folder>.old`` for that instant and then deleted, so a crash leaves a complete folder under one of the names.
    """
    from minift.models import save_pretrained
    from minift.peft import save_trainable
    from minift.peft.apply import find_peft_spec

    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    if find_peft_spec(model) is not None:
        save_trainable(model, tmp)
    else:
        save_pretrained(model, tmp)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(folder, old)
    os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_weights(model: nn.Module, folder) -> nn.Module:
    """Load what :func:`save_weights` wrote into ``model`` (the model it was saved from, or one built the same way)
    in place, and return it."""
    from minift.models import load_pretrained
    from minift.peft import load_trainable
    from minift.peft.apply import find_peft_spec

    if find_peft_spec(model) is not None:
        return load_trainable(model, folder)
    first = next(model.parameters())
    saved = load_pretrained(folder, dtype=first.dtype, head=model.head_kind)
    model.load_state_dict(saved.state_dict())
    return model
