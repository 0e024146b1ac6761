"""Atomic, pickle-free training checkpoints, and the run's best weights.

A checkpoint is a folder ``<run>/checkpoints/step-<N>/`` holding

- ``trainable.safetensors`` — the parameters that train (``minift.peft.io.trainable_state``: everything with
  ``requires_grad``, so all of them under full fine-tuning; the frozen base is reloaded from the model path),
- ``optimizer.safetensors`` — every optimizer state tensor, flattened as ``state.<param index>.<name>``,
- ``rng-rank<R>.safetensors`` / ``rng-rank<R>.json`` — the torch CPU/CUDA, numpy and python generators, per process,
- ``state.json`` — the rest: optimizer param groups and scalar states, scheduler, GradScaler, and the loop's
  position (epoch, micro-batch, step, best metric, ...).

Nothing is pickled, so loading a checkpoint cannot run code (``savestate.py`` writes the files). The folder is
assembled as ``step-<N>.tmp`` and renamed; then ``latest.json`` is replaced atomically to name it and the checkpoint
before it (``{"checkpoint": "step-12", "step": 12, "kept": ["step-12", "step-10"]}``); then every other
``step-*`` folder is deleted (:func:`prune`: the last :data:`KEEP` are kept, so that a latest checkpoint that cannot
be read — a disk that filled up, a file truncated by a copy — is skipped on ``--resume`` for the one before it).
A crash at any moment leaves a usable checkpoint; what an interrupted write leaves (``*.tmp`` folders,
``.*.tmp-<pid>`` files) is deleted by the next write or the next start (:func:`remove_stale`).

The files hold whole tensors, index-keyed as a single-process optimizer's state, whatever the processes: under
``--shard fsdp`` the shards are gathered to process 0 to be written and each process takes its shard of what is
read (``fsdp.py``). So a checkpoint resumes with another number of processes when ``--batch-size × processes`` (the
global micro-batch, which decides the data order) stays the same; each process's generators then start anew from
(seed, step, process). The best weights (``best/``) are in ``weights.py``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load as st_load
from torch import nn

from minift.peft.io import load_trainable_state, trainable_state
from minift.train import fsdp
from minift.train.distributed import barrier, rank, world_size
from minift.train.savestate import (
    atomic_save_tensors,
    atomic_write_json,
    capture_rng,
    flatten_optimizer,
    fork_rng,
    fsync_dir,
    restore_rng,
    unflatten_optimizer,
)
from minift.train.weights import load_weights, recover_weights, save_weights, weights_folder  # noqa: F401 (importers)

LATEST = "latest.json"
KEEP = 2  # checkpoints kept: the newest and the one before it (None in prune/save_checkpoint: keep all)
STATE_KEYS = ("optimizer", "scheduler", "scaler", "loop")


class CheckpointLoadError(ValueError):
    """A checkpoint folder that is missing files or does not match the model/optimizer being resumed."""


class CorruptCheckpoint(CheckpointLoadError):
    """A checkpoint file that is missing or cannot be read (truncated, garbage): an earlier checkpoint may do."""


# --- writing -------------------------------------------------------------------------------------------------------

def save_checkpoint(folder, model: nn.Module, optimizer, scheduler, scaler, loop_state: dict,
                    keep: int | None = KEEP) -> Path:
    """Write a resumable checkpoint under ``folder`` (a run's ``checkpoints/``), point ``latest.json`` at it and
    delete all but the last ``keep`` checkpoints (None: keep every one).

    Called on every process under torchrun: each writes its RNG state, process 0 writes the rest (an FSDP model's
    shards and optimizer states gathered whole first). Interrupted (a second Ctrl-C), it removes its half-written
    folder; the previous checkpoints are untouched.

    Args:
        model: the unwrapped model (not the DDP wrapper; an FSDP model is its own).
        loop_state: JSON-able position of the loop; must hold ``"step"``.
    Returns:
        The checkpoint folder.
    """
    folder = Path(folder)
    step = int(loop_state["step"])
    final, tmp = folder / f"step-{step}", folder / f"step-{step}.tmp"
    if rank() == 0:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale(folder)
        tmp.mkdir()
    barrier()
    try:
        rng_tensors, rng_info = capture_rng()
        atomic_save_tensors(rng_tensors, tmp / f"rng-rank{rank()}.safetensors")
        atomic_write_json(tmp / f"rng-rank{rank()}.json", rng_info)
        barrier()
        with fsdp.gathered(model, trainable_state(model)):  # every process: the shards' all-gathers
            trainable = trainable_state(model) if rank() == 0 else {}
        optimizer_state = fsdp.whole_optimizer_state(optimizer) if fsdp.is_sharded(model) else None
        if rank() == 0:
            opt_tensors, opt_info = flatten_optimizer(optimizer, optimizer_state)
            atomic_save_tensors(trainable, tmp / "trainable.safetensors")
            atomic_save_tensors(opt_tensors, tmp / "optimizer.safetensors")
            sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
            atomic_write_json(tmp / "state.json", {"optimizer": opt_info, "scheduler": sched,
                                                   "scaler": scaler.state_dict() if scaler is not None else {},
                                                   "loop": loop_state})
            _commit(folder, tmp, final, keep)
    except BaseException:
        if rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    return final


def _commit(folder: Path, tmp: Path, final: Path, keep: int | None) -> None:
    """Rename the assembled checkpoint into place, record it in ``latest.json`` and prune."""
    previous = [name for name in kept_names(folder) if name != final.name]
    shutil.rmtree(final, ignore_errors=True)  # the same step written again after resuming from an earlier one
    os.replace(tmp, final)
    fsync_dir(folder)
    kept = [final.name] + (previous if keep is None else previous[:max(0, keep - 1)])
    write_latest(folder, kept)
    prune(folder, kept)


def write_latest(folder: Path, kept: list) -> None:
    """``latest.json``: the newest checkpoint, and the checkpoints kept (newest first)."""
    atomic_write_json(Path(folder) / LATEST, {"checkpoint": kept[0], "step": step_of(kept[0]), "kept": kept})


def prune(folder: Path, kept: list) -> None:
    """Delete every checkpoint folder of ``folder`` that ``kept`` does not name (a ``--save`` policy decides
    ``kept``; see :func:`save_checkpoint`)."""
    for path in Path(folder).glob("step-*"):
        if path.is_dir() and path.name not in kept and step_of(path.name) is not None:
            shutil.rmtree(path, ignore_errors=True)


def remove_stale(folder: Path) -> None:
    """Delete what interrupted writes left in ``folder``: ``*.tmp`` folders and ``.<name>.tmp-<pid>`` files."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in [*folder.glob("*.tmp"), *folder.glob(".*.tmp-*")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def adopt(checkpoint: Path, keep: int | None = KEEP) -> None:
    """After resuming from ``checkpoint``: make it its folder's latest (checkpoints written after it — unreadable
    ones, or a branch left behind by resuming from an earlier ``step-N`` — are pruned by the next save), and delete
    what interrupted writes left."""
    folder = checkpoint.parent
    remove_stale(folder)
    names = kept_names(folder)
    if names[:1] == [checkpoint.name]:
        return
    step = step_of(checkpoint.name)
    older = [n for n in names or _scan(folder) if (step_of(n) or 0) < step and (folder / n).is_dir()]
    write_latest(folder, [checkpoint.name] + (older if keep is None else older[:max(0, keep - 1)]))


# --- finding and reading -------------------------------------------------------------------------------------------

def step_of(name: str) -> int | None:
    """N of a ``step-N`` folder name (None for anything else)."""
    prefix, _, number = name.partition("-")
    return int(number) if prefix == "step" and number.isdigit() else None


def _scan(folder: Path) -> list:
    """The ``step-N`` folders of ``folder``, newest first."""
    names = [p.name for p in folder.glob("step-*") if p.is_dir() and step_of(p.name) is not None]
    return sorted(names, key=step_of, reverse=True)


def _read_latest(folder: Path) -> list:
    """The checkpoint names ``latest.json`` records, newest first; raises ``CorruptCheckpoint`` naming the file."""
    path = folder / LATEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = data.get("kept") or [data["checkpoint"]]
        if not all(isinstance(n, str) and step_of(n) is not None for n in names):
            raise ValueError(f"names no step-N folder: {names!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorruptCheckpoint(f"{path} cannot be read ({type(err).__name__}: {err})") from None
    return names


def kept_names(folder: Path) -> list:
    """What ``latest.json`` records (newest first), or [] when it is missing or unreadable."""
    try:
        return _read_latest(Path(folder)) if (Path(folder) / LATEST).is_file() else []
    except CorruptCheckpoint:
        return []


def candidates(path) -> tuple:
    """(checkpoint folders to try for ``--resume PATH``, newest first; problems met on the way). ``PATH`` is a run
    folder, its ``checkpoints/`` or one ``step-N`` folder (then only that one)."""
    path = Path(path)
    if (path / "state.json").is_file() or step_of(path.name) is not None:
        return [path], []
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    problems, named = [], []
    if (folder / LATEST).is_file():
        try:
            named = _read_latest(folder)
        except CorruptCheckpoint as err:
            problems.append(str(err))
    order = named + [n for n in _scan(folder) if n not in named]
    return [folder / n for n in order], problems


def find_checkpoint(path) -> Path:
    """The checkpoint folder ``--resume PATH`` tries first: a run folder, its ``checkpoints/`` or a ``step-N``."""
    found, _ = candidates(path)
    if not found:
        raise CheckpointLoadError(f"no checkpoint found at {path}: pass the run folder of an earlier run "
                                  f"(it holds checkpoints/{LATEST}), or a checkpoints/step-N folder")
    return found[0]


@dataclass
class Checkpoint:
    """The files of one checkpoint, read and checked, not yet applied."""

    folder: Path
    state: dict  # state.json
    trainable: dict = field(repr=False)  # name → tensor
    optimizer: dict = field(repr=False)  # flattened optimizer tensors
    rng: tuple = field(repr=False)  # (tensors, info) of this process
    forked: bool = False  # written by another number of processes: rng is process 0's, forked per process


def _read(path: Path, reader):
    if not path.is_file():
        raise CorruptCheckpoint(f"{path} is missing")
    try:
        return reader(path.read_bytes())
    except Exception as err:  # SafetensorError, JSONDecodeError, UnicodeDecodeError...: the file is damaged
        raise CorruptCheckpoint(f"{path} cannot be read, it is truncated or corrupt ({type(err).__name__}: "
                                f"{str(err)[:200]})") from None


def read_checkpoint(folder, batch_size: int | None = None, saved_batch_size: int | None = None) -> Checkpoint:
    """Read every file of the checkpoint ``folder`` that this process needs. Raises ``CorruptCheckpoint`` naming
    the file that is missing or damaged, ``CheckpointLoadError`` when the data order would differ: ``batch_size``
    (this run's, per process) × processes is not the checkpoint's (recorded in its loop state as ``global_batch``,
    else the run's ``saved_batch_size`` × the processes that wrote it); without them, other processes are refused."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CorruptCheckpoint(f"{folder} is missing")
    state = _read(folder / "state.json", json.loads)
    if not isinstance(state, dict) or any(not isinstance(state.get(k), dict) for k in STATE_KEYS) \
            or not isinstance(state["loop"].get("step"), int):
        raise CorruptCheckpoint(f"{folder / 'state.json'} is not a checkpoint's state (it needs {STATE_KEYS})")
    saved_world = len(list(folder.glob("rng-rank*.safetensors")))  # one RNG file per process that wrote it
    written = state["loop"].get("global_batch") or (saved_world * saved_batch_size if saved_batch_size else None)
    _check_order(folder, saved_world, written, batch_size * world_size() if batch_size else None)
    index = rank() if saved_world == world_size() else 0  # another number of processes: process 0's, forked
    rng = (_read(folder / f"rng-rank{index}.safetensors", st_load), _read(folder / f"rng-rank{index}.json", json.loads))
    return Checkpoint(folder, state, _read(folder / "trainable.safetensors", st_load),
                      _read(folder / "optimizer.safetensors", st_load), rng, forked=saved_world != world_size())


def _check_order(folder: Path, saved_world: int, written: int | None, global_batch: int | None) -> None:
    """The data order and position depend on the examples per micro-batch over all processes, not on how many
    processes share them: the same number resumes exactly with any number of processes."""
    world = world_size()
    if written is not None and global_batch is not None and written != global_batch:
        fix = (f"--batch-size {written // world}" if written % world == 0 else
               f"a number of processes that divides {written}")
        raise CheckpointLoadError(f"--batch-size {written // saved_world} → {global_batch // world} with "
                                  f"{saved_world} → {world} process(es): {folder} was written with {written} examples "
                                  f"per micro-batch over all processes, this run has {global_batch}, and the data "
                                  f"order depends on that number; resume with {fix}")
    if saved_world != world and (written is None or global_batch is None):
        raise CheckpointLoadError(f"{folder} was written by {saved_world} process(es), this run has {world}: "
                                  "resume with the same number of processes (the data shards and order depend on it)")


@dataclass
class Restored:
    """What :func:`load_checkpoint` restored: the loop state, from which checkpoint, and the newer ones it skipped
    because they could not be read (their problems)."""

    loop: dict
    folder: Path
    skipped: list


def load_checkpoint(path, model: nn.Module, optimizer, scheduler, scaler, batch_size: int | None = None,
                    saved_batch_size: int | None = None) -> Restored:
    """Restore model, optimizer, scheduler, scaler and this process's RNG from the newest readable checkpoint of
    ``path`` (see :func:`candidates`); a checkpoint that cannot be read is skipped for the one before it.
    ``batch_size`` / ``saved_batch_size`` (this run's and the resumed run's ``--batch-size``): another number of
    processes resumes when the global micro-batch stays the same (:func:`read_checkpoint`)."""
    found, problems = candidates(path)
    for folder in found:
        try:
            checkpoint = read_checkpoint(folder, batch_size, saved_batch_size)
        except CorruptCheckpoint as err:
            problems.append(str(err))
            continue
        _apply(checkpoint, model, optimizer, scheduler, scaler)
        return Restored(checkpoint.state["loop"], folder, problems)
    if problems:
        raise CheckpointLoadError("no readable checkpoint: " + "; ".join(problems) + ". Start a new run (with "
                                  "--overwrite to reuse the folder), or restore the files from a backup")
    raise CheckpointLoadError(f"no checkpoint found at {path}: pass the run folder of an earlier run "
                              f"(it holds checkpoints/{LATEST}), or a checkpoints/step-N folder")


def _apply(checkpoint: Checkpoint, model: nn.Module, optimizer, scheduler, scaler) -> None:
    folder, state = checkpoint.folder, checkpoint.state
    try:
        restore_rng(*checkpoint.rng)  # first: a bad state is refused here and leaves the generators as they were
    except ValueError as err:
        raise CheckpointLoadError(f"{folder / 'rng-rank*.safetensors'} (or .json): {err}") from None
    if checkpoint.forked:
        fork_rng(rank())
    try:
        load_trainable_state(model, fsdp.as_shards(model, checkpoint.trainable), str(folder / "trainable.safetensors"))
    except ValueError as err:
        raise CheckpointLoadError(f"{err} Resume with the same model, method and options") from None
    device = next(model.parameters()).device
    opt_tensors = {k: (v if k.endswith(".step") else v.to(device)) for k, v in checkpoint.optimizer.items()}
    try:
        optimizer.load_state_dict(fsdp.as_shards(model, unflatten_optimizer(opt_tensors, state["optimizer"]),
                                                 optimizer))
        scheduler.load_state_dict({**scheduler.state_dict(), **state["scheduler"]})
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise CheckpointLoadError(f"{folder}: the optimizer state does not fit ({type(err).__name__}: {err}); "
                                  "resume with the same method and options") from None
