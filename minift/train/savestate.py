"""Pickle-free files of training state: atomic writes, an optimizer's state as tensors + JSON, the RNG states.

Every file is written to a temporary name in its folder (``.<name>.tmp-<pid>``), fsync'ed and ``os.replace``'d, so
a reader sees the old file or the new one, never half of one; a write that is interrupted removes its temporary
file (and one killed outright leaves a ``.tmp-`` file that ``checkpoint.remove_stale`` deletes).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as st_save


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # also a second Ctrl-C: no temporary file is left behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
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

def flatten_optimizer(optimizer: torch.optim.Optimizer, state: dict | None = None) -> tuple:
    """(tensors, json-able dict) holding ``optimizer.state_dict()`` exactly (or ``state``, that state with its
    sharded tensors gathered whole: ``minift.train.fsdp.whole_optimizer_state``)."""
    state = optimizer.state_dict() if state is None else state
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
    """Set the generators to the states :func:`capture_rng` returned. Raises ``ValueError`` (and leaves the
    generators as they were) when the states are not valid ones."""
    before = capture_rng()
    try:
        _set_rng(tensors, info)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
        _set_rng(*before)
        raise ValueError(f"not a valid generator state ({type(err).__name__}: {err})") from None


def fork_rng(index: int) -> None:
    """Give process ``index`` generators of its own, drawn from the current ones: processes that restored one saved
    state (a checkpoint written by another number of processes) then draw differently, reproducibly."""
    seed = int(torch.randint(0, 2**31 - 1, (1,))) + index
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _set_rng(tensors: dict, info: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((name, tensors["numpy.key"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, key, gauss = info["python"]
    random.setstate((version, tuple(key), gauss))
