"""Running a sweep: its cells one after another in this process, each through ``minift.train``'s ``train_one``.

Resumable: a cell whose folder holds ``summary.json`` is finished and skipped; one that holds a checkpoint (it was
interrupted, or killed) is resumed from it (``--resume`` of its folder); one that was started but left no checkpoint
is started again (its files replaced). A cell that fails — a bad option, a missing file, a NaN loss, running out of
memory — is recorded with its error and the sweep goes on; running the sweep again retries it (a NaN stop, which
leaves a summary, is kept as it is: delete the cell's folder to run it again). A Ctrl-C / SIGTERM stops the cell at
its next step with a checkpoint, as in minift.train, and ends the sweep; the same command continues it.

After every cell ``cells.json`` (every cell: its values, status, error, counts and test metrics) and ``failed.json``
(the failed ones, with the traceback) are rewritten in the sweep's folder, so they are current after a kill.
"""
from __future__ import annotations

import dataclasses
import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

from minift.sweep.grid import Cell, Sweep

CELLS_FILE, FAILED_FILE, SWEEP_FILE = "cells.json", "failed.json", "sweep.json"
SUMMARY = "summary.json"  # minift.train.runfolder.SUMMARY


@dataclass
class Outcome:
    """What became of one cell."""

    cell: Cell
    status: str = "pending"  # pending | finished | failed
    summary: dict | None = None  # the run's summary.json
    error: str = ""  # why it failed
    detail: str = ""  # the traceback of a failure
    resumed: bool = False  # continued from its checkpoint in this sweep run
    skipped: bool = False  # finished before this sweep run

    def record(self) -> dict:
        """The cell's line of ``cells.json``."""
        s = self.summary or {}
        keep = ("trainable_params", "all_params", "trainable_percent", "steps", "stopped", "main_metric")
        return {"name": self.cell.name, "values": self.cell.values, "status": self.status, "error": self.error,
                "folder": str(self.cell.config.output_dir), **{k: s[k] for k in keep if k in s},
                "test": s.get("test", {})}


def read_summary(folder: Path) -> dict | None:
    """A cell folder's ``summary.json`` (None when absent or unreadable: the run did not end)."""
    try:
        return json.loads((Path(folder) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def other_settings(cell: Cell, folder: Path) -> str:
    """Why the run in ``folder`` is not the cell's (its config.json differs where a resumed run's may not), or ""."""
    from minift.train.config import TrainConfigError
    from minift.train.flags import check_resumable, saved_config

    try:
        check_resumable(saved_config(str(folder)), dataclasses.replace(cell.config, resume=str(folder)))
    except TrainConfigError as err:
        return (f"{folder} holds a run with other settings than this cell's ({err}); delete the folder to run the "
                "cell again, or give the sweep another output_dir")
    return ""


def has_checkpoint(folder: Path) -> bool:
    from minift.train.checkpoint import candidates

    return bool(candidates(Path(folder))[0]) if (Path(folder) / "checkpoints").is_dir() else False


def outcome_of(cell: Cell) -> Outcome:
    """A cell as its folder shows it now: finished (it has a summary), or pending; a summary of a run with other
    settings than the cell's (the sweep file changed since) is a failure that says so, and is kept."""
    folder = Path(cell.config.output_dir)
    summary = read_summary(folder)
    if summary is None:
        return Outcome(cell)
    problem = other_settings(cell, folder)
    if problem:
        return Outcome(cell, "failed", summary, problem, skipped=True)
    failed = summary.get("stopped") == "nan"
    return Outcome(cell, "failed" if failed else "finished", summary,
                   "the training loss became NaN/inf (delete the cell's folder to run it again)" if failed else "",
                   skipped=True)


def run_sweep(sweep: Sweep, progress=None, say=print) -> list:
    """Run every cell not yet finished, in grid order; return an ``Outcome`` per cell.

    Args:
        progress: ``minift.train.progress.RunProgress`` (or None) shown for each cell.
        say: where the one-line notes go (a cell starts, is skipped, fails).
    Raises:
        minift.train.recipe.TrainingStopped: a signal stopped a cell (its checkpoint is saved); the records are
            written first. KeyboardInterrupt likewise.
    """
    out = sweep.output_dir
    out.mkdir(parents=True, exist_ok=True)
    cells = sweep.cells()
    write_json(out / SWEEP_FILE, _definition(sweep, cells))
    outcomes = [outcome_of(cell) for cell in cells]
    skipped = sum(o.skipped for o in outcomes)
    if skipped:
        say(f"{skipped} of {len(cells)} cells already finished in {out}: skipped")
    try:
        for number, outcome in enumerate(outcomes, 1):
            if outcome.skipped:
                continue
            run_cell(outcome, f"[{number}/{len(cells)}]", progress, say)
            write_records(out, outcomes)
    finally:
        write_records(out, outcomes)
    return outcomes


def run_cell(outcome: Outcome, position: str, progress, say) -> None:
    """Train one cell (resumed from its checkpoint when it has one) and record how it ended in ``outcome``."""
    from minift.train.checkpoint import CheckpointLoadError
    from minift.train.recipe import TrainingStopped, train_one

    cell = outcome.cell
    folder = Path(cell.config.output_dir)
    outcome.resumed = has_checkpoint(folder)
    config = _start_config(cell, folder, outcome.resumed)
    say(f"{position} {cell.name}" + (" (resumed from its checkpoint)" if outcome.resumed else ""))
    try:
        try:
            outcome.summary = train_one(config, progress)
        except CheckpointLoadError as err:  # no checkpoint of it can be read: start the cell again
            say(f"{position} {cell.name}: {err}; starting it again")
            outcome.resumed = False
            outcome.summary = train_one(_start_config(cell, folder, False), progress)
        outcome.status, outcome.error, outcome.detail = "finished", "", ""
    except TrainingStopped as stop:
        if stop.summary.get("stopped") != "nan":  # a signal: the cell is checkpointed, the sweep ends here
            raise
        _failed(outcome, str(stop), say, position)
        outcome.summary = stop.summary
    except Exception as err:  # the sweep goes on: the failure is recorded with what the run said
        _failed(outcome, f"{type(err).__name__}: {err}", say, position, traceback.format_exc())


def _start_config(cell: Cell, folder: Path, resume: bool):
    if resume:
        return dataclasses.replace(cell.config, resume=str(folder))
    started = folder.is_dir() and any(folder.iterdir())  # killed before its first checkpoint: replace its files
    return dataclasses.replace(cell.config, overwrite=True) if started else cell.config


def _failed(outcome: Outcome, message: str, say, position: str, detail: str = "") -> None:
    outcome.status, outcome.error, outcome.detail = "failed", message, detail
    say(f"{position} {outcome.cell.name} failed: {message}")


def write_records(out: Path, outcomes: list) -> None:
    """``cells.json`` (every cell) and ``failed.json`` (the failed ones, with tracebacks)."""
    write_json(out / CELLS_FILE, [o.record() for o in outcomes])
    write_json(out / FAILED_FILE, [{**o.record(), "traceback": o.detail} for o in outcomes if o.status == "failed"])


def write_json(path: Path, data) -> None:
    """Write JSON through a temporary file and a rename, so a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _definition(sweep: Sweep, cells: list) -> dict:
    """What ``sweep.json`` records: the axes, what every cell shares, the tables' axes and the cells' folders."""
    rows, cols = sweep.table_axes
    return {"axes": sweep.axes, "shared": sweep.shared, "config_file": sweep.config_file, "rows": rows, "cols": cols,
            "cells": [{"name": c.name, "values": c.values} for c in cells]}
