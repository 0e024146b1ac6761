"""The run's best weights, in their final format: a ``minift.peft.save_trainable`` folder for a PEFT method, a
``minift.models.save_pretrained`` folder for full fine-tuning — what ``load_trainable`` / ``load_pretrained`` (and
transformers, for a full model) read, whatever the number of processes that trained them.

:func:`save_weights` writes them once per improvement, assembling ``best.tmp/`` and renaming it into place;
:func:`load_weights` reads them back into the model, and finishes a replacement a crash interrupted
(:func:`weights_folder`, :func:`recover_weights`). Under ``torchrun`` every process calls both: an FSDP-sharded
model's parameters are gathered whole for process 0 to write, and every process loads its own shard back
(``minift.train.fsdp.gathered`` / ``loading``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from minift.peft.io import saved_names
from minift.train import distributed, fsdp
from minift.train.savestate import fsync_dir


def _aside(folder: Path) -> tuple:
    return folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")


def save_weights(model: nn.Module, folder) -> Path:
    """Write what a run delivers to ``folder``, atomically: the ``minift.peft.save_trainable`` folder of a PEFT
    model, else (full fine-tuning) a ``minift.models.save_pretrained`` folder that transformers loads.

    The folder is assembled as ``<folder>.tmp`` and renamed into place; the previous one is moved aside to
    ``<folder>.old`` for that instant and then deleted, so a crash leaves a complete folder under one of the names
    (:func:`recover_weights` puts it back). Under torchrun every process calls it and process 0 writes.
    """
    folder = Path(folder)
    with fsdp.gathered(model, saved_names(model)):
        if distributed.is_main():
            _write(model, folder)
    return folder


def _write(model: nn.Module, folder: Path) -> None:
    from minift.models import save_pretrained
    from minift.peft import save_trainable
    from minift.peft.apply import find_peft_spec

    folder = recover_weights(folder)
    tmp, old = _aside(folder)
    try:
        if find_peft_spec(model) is not None:
            save_trainable(model, tmp)
        else:
            save_pretrained(model, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def weights_folder(folder) -> Path:
    """Where the weights :func:`save_weights` wrote to ``folder`` are, without changing anything: ``folder``, or
    after a crash between its two renames, the complete ``<folder>.tmp`` (or the previous ``<folder>.old``)."""
    folder = Path(folder)
    tmp, old = _aside(folder)
    if folder.exists() or not old.exists():
        return folder
    return tmp if tmp.exists() else old  # the old one was moved aside only once the new one was complete


def recover_weights(folder) -> Path:
    """Finish a :func:`save_weights` a crash interrupted (rename what :func:`weights_folder` finds into place) and
    delete what it left aside; returns ``folder``."""
    folder = Path(folder)
    found, (tmp, old) = weights_folder(folder), _aside(folder)
    if found != folder:
        os.replace(found, folder)
        fsync_dir(folder.parent)
    for path in (tmp, old):
        shutil.rmtree(path, ignore_errors=True)
    return folder


def load_weights(model: nn.Module, folder) -> nn.Module:
    """Load what :func:`save_weights` wrote into ``model`` (the model it was saved from, or one built the same way)
    in place, and return it. Under torchrun every process calls it and loads its own copy (or shard)."""
    from minift.peft import load_trainable
    from minift.peft.apply import find_peft_spec

    folder = weights_folder(folder)
    with fsdp.loading(model, saved_names(model)):
        if find_peft_spec(model) is not None:
            return load_trainable(model, folder)
        _load_full(model, folder)
    return model


def _load_full(model: nn.Module, folder: Path) -> None:
    """Copy a ``save_pretrained`` folder's tensors into ``model`` by name (not ``load_state_dict``, whose FSDP hook
    would take the whole tensors ``fsdp.loading`` lends for shards)."""
    from minift.models import load_pretrained

    first = next(model.parameters())
    saved = load_pretrained(folder, dtype=first.dtype, head=model.head_kind).state_dict()
    own = model.state_dict(keep_vars=True)  # parameters (tied ones under each name) and persistent buffers
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    wrong = sorted(k for k in set(own) & set(saved) if own[k].shape != saved[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{folder} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"wrong shape {wrong[:5]}")
    with torch.no_grad():
        for name, tensor in saved.items():
            own[name].copy_(tensor)
