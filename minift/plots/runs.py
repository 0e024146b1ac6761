"""Run folders as data for figures: read one, find them under a folder, group them by their config minus the seed.

A run folder is what ``python -m minift.train`` writes: ``metrics.jsonl`` ("train" records with step, epoch,
loss, lr; "eval" records with step, epoch, reason and the validation metrics, and the validation loss as
``loss`` or ``val_loss`` when the engine logs it), ``summary.json`` (test metrics, ``main_metric``, task, method,
model, seed) and ``config.json``. Only ``metrics.jsonl`` is required.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

RECORD_FIELDS = {"type", "step", "epoch", "reason", "time", "total_steps"}  # eval-record keys that are not metrics
VAL_LOSS_KEYS = ("val_loss", "loss")  # the validation loss in an eval record, under either name
# Config keys that say where or how a run was written, not what was trained: never part of a group.
NOT_THE_EXPERIMENT = {"seed", "seeds", "output_dir", "resume", "plot", "device", "data_dir"}
MAIN_AXES = ("method", "model", "task")  # what a report compares, in the order --by picks by default
TITLE_ORDER = ("task", "method", "model")  # how a title names a run: sst2 · lora · roberta-base
FOLDER_KEY = "run"  # the group key of a run folder without config.json or summary.json: its folder name
SKIPPED_FOLDERS = {"checkpoints", "best"}  # inside a run folder: never run folders themselves


class NoRuns(FileNotFoundError):
    """A folder with no run folder in it (or under it)."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def short_name(key: str, value) -> str:
    """How a config value reads in a legend or a title: a model or task file by its name, numbers compactly."""
    if value is None:
        return "default"
    if key == "task" and isinstance(value, str) and value.startswith("file:"):
        return "file:" + Path(value[5:].split(",")[0]).stem
    if key == "model" and isinstance(value, str):
        return Path(value.rstrip("/")).name or value
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass
class Run:
    """One run folder's records, summary and config."""

    path: Path
    train: list = field(default_factory=list)  # "train" records, in order
    evals: list = field(default_factory=list)  # "eval" records, in order
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def get(self, key: str, default=None):
        """A run setting (task, method, model, seed, ...): the summary's value, else the config's."""
        value = self.summary.get(key)
        return self.config.get(key, default) if value is None else value

    @property
    def title(self) -> str:
        """``task · method · model · seed N`` (what is known of it)."""
        parts = [short_name(k, self.get(k)) for k in TITLE_ORDER if self.get(k) is not None]
        if self.get("seed") is not None:
            parts.append(f"seed {self.get('seed')}")
        return " · ".join(parts) or self.path.name

    @property
    def main_metric(self) -> str | None:
        """The task's main metric: the summary's, else the first validation metric."""
        names = self.metric_names()
        return self.summary.get("main_metric") or (names[0] if names else None)

    def metric_names(self) -> list:
        """The validation metrics' names, in the order the engine logged them (the loss excluded)."""
        names = []
        for record in self.evals:
            names += [k for k, v in record.items() if _number(v) and k not in RECORD_FIELDS
                      and k not in VAL_LOSS_KEYS and k not in names]
        return names

    def curve(self, name: str) -> tuple:
        """(steps, values) of a logged series: ``train_loss``, ``lr``, ``val_loss`` or a validation metric."""
        if name in ("train_loss", "lr"):
            records, key = self.train, ("loss" if name == "train_loss" else "lr")
            points = [(r["step"], r[key]) for r in records if _number(r.get(key))]
        elif name == "val_loss":
            points = [(r["step"], v) for r in self.evals
                      for v in [next((r[k] for k in VAL_LOSS_KEYS if _number(r.get(k))), None)] if v is not None]
        else:
            points = [(r["step"], r[name]) for r in self.evals if _number(r.get(name))]
        return [p[0] for p in points], [p[1] for p in points]

    def epoch_ends(self) -> list:
        """Optimizer steps at which an epoch ended, before the last logged step.

        Exact from end-of-epoch evaluations; otherwise where the logged epoch number goes up (exact when
        ``log_every`` divides the epoch, else the first logged step after the boundary).
        """
        ends = {r["step"] for r in self.evals if r.get("reason") == "epoch"}
        if not ends:
            ends = {b["step"] for a, b in zip(self.train, self.train[1:]) if b.get("epoch", 0) > a.get("epoch", 0)}
        last = max([r["step"] for r in self.train + self.evals], default=0)
        return sorted(s for s in ends if s < last)

    def test_value(self, metric: str) -> float | None:
        """The final test metric ``metric`` (None when the run has none, e.g. it stopped early)."""
        value = self.summary.get("test", {}).get(metric)
        return float(value) if _number(value) and math.isfinite(value) else None


def _records(path: Path) -> list:
    """The JSON lines of ``path``; a cut-off last line (the run was killed while writing it) is left out."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not a JSON record: {line[:60]!r}") from None
    return records


def read_run(folder: str | Path) -> Run:
    """The :class:`Run` in ``folder`` (its ``metrics.jsonl``, plus ``summary.json`` / ``config.json`` if present)."""
    folder = Path(folder)
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise NoRuns(f"{path} not found: pass a run folder written by python -m minift.train")
    records = _records(path)
    return Run(folder, train=[r for r in records if r.get("type") == "train"],
               evals=[r for r in records if r.get("type") == "eval"],
               summary=_read_json(folder / "summary.json"), config=_read_json(folder / "config.json"))


def find_runs(folder: str | Path) -> list:
    """The run folders in ``folder``: itself if it is one, else every folder under it holding a
    ``metrics.jsonl`` (a ``--seeds`` folder's ``seed-N``, a sweep's cells, at any depth), sorted by path."""
    folder = Path(folder)
    if (folder / "metrics.jsonl").is_file():
        return [folder]
    if not folder.is_dir():
        raise NoRuns(f"{folder}: no such folder")
    found = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in SKIPPED_FOLDERS):
        found += find_runs(child)
    return found


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = tuple(value) if isinstance(value, list) else value
    return out


def experiment_key(run: Run) -> dict:
    """What defines ``run``'s experiment: its config minus the seed and where it was written, with the options
    of the methods it does not use left out (a full run's default LoRA rank is not part of what it is)."""
    from minift.peft.config import METHODS

    method = run.get("method")
    others = [m for m in METHODS if m != method]
    key = {k: v for k, v in _flat(run.config).items() if k not in NOT_THE_EXPERIMENT
           and not any(k.startswith((m + ".", m + "_")) for m in others)}
    for name in MAIN_AXES:  # the summary's values win (the resolved model path) and stand in without a config
        if run.get(name) is not None:
            key[name] = run.get(name)
    return key if key else {FOLDER_KEY: run.path.name}


@dataclass
class Group:
    """Runs that differ only by seed, and the settings they share."""

    key: dict
    runs: list

    def values(self, metric: str) -> list:
        """The runs' test values of ``metric`` (runs without one are left out)."""
        return [v for v in (r.test_value(metric) for r in self.runs) if v is not None]

    def mean_std(self, metric: str) -> tuple:
        """(mean, sample std, n) of the test ``metric`` over the group's seeds; std is 0 for one seed."""
        values = self.values(metric)
        if not values:
            return math.nan, math.nan, 0
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def group_runs(runs: list) -> list:
    """Groups of runs with the same :func:`experiment_key`, in the order first seen."""
    groups = []
    for run in runs:
        key = experiment_key(run)
        match = next((g for g in groups if g.key == key), None)
        if match is None:
            groups.append(Group(key, [run]))
        else:
            match.runs.append(run)
    return groups


def varying_keys(groups: list) -> list:
    """The settings whose value differs between groups, main axes first; a setting that follows from the main
    axes (the default learning rate of each method) is left out, it tells nothing new."""
    keys = sorted({k for g in groups for k in g.key})
    varying = [k for k in keys if len({repr(g.key.get(k)) for g in groups}) > 1]
    main = [k for k in MAIN_AXES if k in varying]

    def implied(key: str) -> bool:
        seen = {}
        for g in groups:
            if seen.setdefault(tuple(repr(g.key.get(m)) for m in main), repr(g.key.get(key))) != repr(g.key.get(key)):
                return False
        return bool(main)

    return main + [k for k in varying if k not in main and not implied(k)]


def label(key: dict, names: list) -> str:
    """A legend label from the settings ``names`` of a group key: main axes by value, the rest as name=value."""
    parts = []
    for name in (n for n in names if n in key):  # a full run has no LoRA rank to show
        value = short_name(name, key.get(name))
        parts.append(value if name in (*MAIN_AXES, FOLDER_KEY) else f"{name.split('.')[-1]}={value}")
    return " ".join(parts)
