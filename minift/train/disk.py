"""What a run leaves on disk: ``--save {last,all,best,none}`` (``minift.train.config.SAVE_POLICIES``).

=========  =======================================  ===========================================================
--save     while the run trains                     once it has ended (completed, early stopping, max_steps)
=========  =======================================  ===========================================================
last       ``checkpoints/``: the newest two          the newest checkpoint (resumable, e.g. to train on with a
(default)  (``checkpoint.KEEP``); ``best/``          raised ``--epochs``), and ``best/``
all        every checkpoint; ``best/``              every checkpoint, and ``best/``
best       as ``last``                              ``best/`` only: ``checkpoints/`` is deleted
none       as ``last``                              neither: ``checkpoints/`` and ``best/`` are deleted once the
                                                    test metrics are in ``summary.json``
=========  =======================================  ===========================================================

``best/`` holds the best weights once, in their final format (the PEFT method's trainable tensors, or the whole
model under full fine-tuning); a checkpoint holds the trainable tensors and the optimizer's state (AdamW: two more
copies). So a full fine-tuning of a RoBERTa-base keeps about 0.5 GB in ``best/`` and 1.5 GB per checkpoint; a
LoRA run, a few MB in all. The config, ``metrics.jsonl``, ``summary.json`` and the curves always stay.

A run that stops early on a signal or a NaN loss keeps its checkpoints whatever ``--save`` says: it is resumed
from them. Deleting is ordered so that a crash at any moment leaves a consistent folder: ``latest.json`` is
rewritten (atomically) to name only what stays before anything is deleted, and a folder that goes is first renamed
aside to ``<name>.tmp`` (which a later start of the run deletes, ``checkpoint.remove_stale``), then removed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from minift.train.checkpoint import KEEP, kept_names, prune, write_latest


def keep(policy: str) -> int | None:
    """How many checkpoints a run keeps while it trains (None: every one)."""
    return None if policy == "all" else KEEP


def finish(out: Path, policy: str, checkpoints: str = "checkpoints", best: str = "best") -> None:
    """Leave what ``policy`` keeps in the ended run's folder ``out`` (see the module docstring)."""
    out = Path(out)
    folder = out / checkpoints
    if policy == "last":
        kept = kept_names(folder)[:1]
        if kept:
            write_latest(folder, kept)
            prune(folder, kept)
    elif policy in ("best", "none"):
        remove(folder)
        if policy == "none":
            remove(out / best)


def remove(path: Path) -> None:
    """Delete a folder: renamed aside first (one atomic step), then removed."""
    path = Path(path)
    if not path.exists():
        return
    aside = path.with_name(path.name + ".tmp")
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)
