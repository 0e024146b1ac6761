"""A sweep: its axes (TrainConfig keys, each with a list of values), what every cell shares, and its cells.

A sweep file is YAML::

    grid:                      # the axes, outermost first: every combination is one run (a cell)
      model: [roberta-base, bert-base-uncased, scibert]
      task: [restaurant, acl, agnews]
      seed: [42, 20, 13, 5, 2]
    rows: model                # the tables' rows and columns (default: the first two axes other than seed)
    cols: task
    output_dir: runs/sweeps/models-tasks   # the sweep's folder: one folder per cell, the tables, the figures
    epochs: 3                  # any other key is a TrainConfig key that every cell shares

``--grid 'model=A,B task=x,y method=full,lora lora_r=2,8 seed=42,20,13,5,2'`` gives (or, with a file, adds or
replaces) axes on the command line: space-separated ``key=v1,v2,...``; a value that holds commas (a list such as
``lora_targets``, a ``file:`` task of three files) is written in brackets: ``lora_targets=[query,value],[query]``.

An axis is any TrainConfig key in any spelling minift.train reads: ``lora.r``, ``lora_r``, ``lora-r`` and
``--lora-r`` all name LoRA's rank; ``seeds`` is the ``seed`` axis. A cell's config is, lowest first: the
TrainConfig defaults, ``configs/<task>.yaml`` (or ``--config FILE``), the sweep file's keys, the command line's
flags, and the cell's own values. A method's option is not part of a cell of another method: with
``method=full,lora lora_r=2,8`` the full fine-tuning runs once per seed, not once per rank.
"""
from __future__ import annotations

import itertools
import re
import shlex
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from minift.peft.flags import flag, method_flags, parse_bool, unwrap, value_parser
from minift.train.config import METHOD_FIELDS, TrainConfig, TrainConfigError, merge, nest, option_names, plain_fields

SEED = "seed"
SWEEP_KEYS = ("grid", "rows", "cols")  # a sweep file's own keys; output_dir names the sweep's folder
NOT_IN_A_SWEEP = ("resume", "seeds", "overwrite")  # resume: run the sweep again; seeds: the seed axis


class SweepError(TrainConfigError):
    """A sweep file, ``--grid`` or axis that cannot be used, with what to do instead."""


# --- keys and values ---------------------------------------------------------------------------------------------

def axis_key(key: str) -> str:
    """The config key an axis names: ``lora_r`` / ``lora-r`` / ``--lora-r`` / ``lora.r`` → ``lora.r``,
    ``batch-size`` → ``batch_size``, ``seeds`` → ``seed``. Unknown keys are a ``SweepError`` listing the known."""
    text = str(key).strip().lstrip("-")
    section, dot, option = text.partition(".")
    if dot:
        name = f"{section.replace('-', '_')}.{option.replace('-', '_')}"
    else:
        name = text.replace("-", "_")
        for method, cls in METHOD_FIELDS.items():
            if name.startswith(method + "_") and name[len(method) + 1:] in option_names(cls):
                name = f"{method}.{name[len(method) + 1:]}"
    name = SEED if name == "seeds" else name
    if name not in _annotations():
        raise SweepError(f"grid axis {key!r} is not a config key; axes are TrainConfig keys such as model, task, "
                         f"method, seed, lr, lora_r (lora.r), adapter_size: {', '.join(sorted(_annotations()))}")
    if name in NOT_IN_A_SWEEP:
        raise SweepError(f"{key!r} cannot be a grid axis")
    return name


def _annotations() -> dict:
    """Config key (method options dotted) → its annotation, e.g. ``{"lr": "float | None", "lora.r": "int"}``."""
    out = {name: annotation for name, annotation in plain_fields().items()}
    out.update({dest: annotation for dest, annotation, _, _ in method_flags()})
    return out


def parse_value(key: str, text: str):
    """A value of axis ``key`` from ``--grid`` text, typed as the flag of that key reads it."""
    annotation = _annotations()[key]
    try:
        if unwrap(annotation)[0] is bool and not unwrap(annotation)[2]:
            return parse_bool(text)
        return value_parser(annotation)(text)
    except Exception as err:  # argparse's ArgumentTypeError: say which axis
        raise SweepError(f"--grid {key}={text}: {err}") from None


def split_values(text: str) -> list:
    """``a,b,[c,d]`` → ``["a", "b", "c,d"]``: commas separate values, except inside brackets."""
    values, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
            if depth == 1:
                continue
        elif char == "]":
            depth -= 1
            if depth == 0:
                continue
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise SweepError(f"--grid: unbalanced brackets in {text!r}")
    return [*values, current]


def parse_grid(texts: list) -> dict:
    """Axes from ``--grid`` strings (each ``key=v1,v2 key2=...``), in order; a repeated key is an error."""
    axes: dict = {}
    for text in texts:
        for token in shlex.split(text):
            key, eq, values = token.partition("=")
            if not eq or not values:
                raise SweepError(f"--grid: {token!r} is not key=value[,value...] (e.g. 'model=A,B seed=42,13')")
            name = axis_key(key)
            if name in axes:
                raise SweepError(f"--grid: axis {key!r} given twice")
            axes[name] = [parse_value(name, v) for v in split_values(values)]
    return axes


# --- the sweep ---------------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """One run of the grid."""

    name: str  # its folder's name under the sweep's folder, from its values
    values: dict  # axis → value, for the axes that matter to this cell (another method's options left out)
    config: TrainConfig  # the run's whole config (output_dir: the cell's folder)


@dataclass
class Sweep:
    """The axes, what every cell shares, where it writes and how it tabulates."""

    axes: dict  # axis → list of values, outermost first
    shared: dict = field(default_factory=dict)  # nested TrainConfig keys of the sweep file and the command line
    config_file: str | None = None  # --config: replaces configs/<task>.yaml, as in minift.train
    output_dir: Path = Path("runs/sweep")
    rows: str | None = None
    cols: str | None = None

    def cells(self) -> list:
        """Every cell, in grid order (the first axis outermost); a cell that differs from an earlier one only by
        another method's options is the same run and appears once."""
        cells, seen = [], set()
        for combination in itertools.product(*self.axes.values()):
            values = dict(zip(self.axes, combination))
            config = self.cell_config(values, output_dir=None)
            relevant = {k: v for k, v in values.items() if _matters(k, config.method)}
            key = repr(sorted(relevant.items(), key=lambda kv: kv[0]))
            if key in seen:
                continue
            seen.add(key)
            cells.append(Cell("", relevant, config))
        names = cell_names([c.values for c in cells], self.labels)
        for cell, name in zip(cells, names):
            cell.name = name
            cell.config = self.cell_config(cell.values, output_dir=self.output_dir / name)
        return cells

    def cell_config(self, values: dict, output_dir: Path | None) -> TrainConfig:
        """The TrainConfig of a cell with ``values`` (see the module docstring for the order)."""
        from minift.train.flags import absolute_paths, load_yaml, task_yaml

        given = merge(self.shared, nest(dict(values), "the grid"))
        task = given.get("task", TrainConfig.task)
        yaml_path = Path(self.config_file) if self.config_file else task_yaml(task)
        base = load_yaml(yaml_path) if yaml_path is not None else {}
        resolved = absolute_paths(merge(base, given))
        resolved["output_dir"] = str(output_dir) if output_dir is not None else None
        try:
            return TrainConfig(**resolved)
        except TrainConfigError as err:
            shown = " ".join(f"{k}={v}" for k, v in values.items())
            raise SweepError(f"cell {shown or '(no axes)'}: {err}") from None

    @property
    def labels(self) -> dict:
        """How each axis value reads in folder names and tables (``value_labels``)."""
        return value_labels(self.axes)

    @property
    def table_axes(self) -> tuple:
        """(rows, cols) of the tables: the given ones, else the first two axes other than seed (``metric``: one
        column per metric; a method option is no column when the methods are the rows)."""
        others = [a for a in self.axes if a != SEED]
        rows = self.rows or (others[0] if others else None)
        # a method's options join the method's label when the methods are rows (lora r=8), so they are no columns
        cols = self.cols or next((a for a in others if a != rows and not (rows == "method" and "." in a)), "metric")
        return rows, cols


def _matters(key: str, method: str) -> bool:
    section = key.partition(".")[0]
    return section not in METHOD_FIELDS or section == method


def load_sweep(path: str | Path | None, grid: list | None = None, flags: dict | None = None,
               config_file: str | None = None, rows: str | None = None, cols: str | None = None) -> Sweep:
    """A ``Sweep`` from a sweep file (or none), ``--grid`` strings and the other command-line flags (``flags``:
    nested TrainConfig keys, as ``minift.train.config.nest`` makes them).

    Raises:
        SweepError: no axes, an unknown key, an axis also given as a flag, bad rows/cols.
    """
    data = _read(path) if path is not None else {}
    axes = {axis_key(k): _listed(v) for k, v in (data.pop("grid", None) or {}).items()}
    for name, values in parse_grid(grid or []).items():
        axes[name] = values  # the command line replaces an axis of the file, or adds one
    flags = dict(flags or {})
    shared = nest({k: v for k, v in data.items() if k not in SWEEP_KEYS}, str(path))
    if "seeds" in flags or "seeds" in shared:
        axes.setdefault(SEED, list(flags.pop("seeds", None) or shared.pop("seeds")))
    for key in NOT_IN_A_SWEEP:
        if key in flags or key in shared:
            raise SweepError(f"--{key.replace('_', '-')} is not for a sweep: run the same sweep command again to "
                             "go on (finished cells are skipped, an interrupted one is resumed); delete a cell's "
                             "folder to run it again")
    shared = merge(shared, flags)
    output_dir = Path(shared.pop("output_dir", None) or Path("runs") / f"sweep-{Path(str(path or 'grid')).stem}")
    if not axes:
        raise SweepError("the sweep has no axes: give grid: in the sweep file or --grid 'key=v1,v2 ...'")
    clash = [a for a in axes if a in _flat_keys(shared)]
    if clash:
        raise SweepError(f"{', '.join(flag(a) for a in clash)}: also an axis of the grid; drop the flag or the axis")
    rows, cols = rows or data.get("rows"), cols or data.get("cols")
    for name, value in (("rows", rows), ("cols", cols)):
        if value is not None and value != "metric" and axis_key(value) not in axes:
            raise SweepError(f"--{name} {value}: not an axis of the grid ({', '.join(axes)}) nor 'metric'")
    rows, cols = (axis_key(v) if v not in (None, "metric") else v for v in (rows, cols))
    if rows is not None and rows == cols:
        raise SweepError(f"--rows and --cols are both {rows}")
    if SEED in (rows, cols):
        raise SweepError("seed is what the tables average over (mean ± std): choose other --rows / --cols")
    return Sweep(axes, shared, config_file, output_dir, rows, cols)


def _read(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("grid", {}), dict):
        raise SweepError(f"{path} must hold a mapping with grid: {{axis: [values]}} and TrainConfig keys")
    return data


def _listed(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _flat_keys(nested: dict) -> set:
    out = set()
    for key, value in nested.items():
        if key in METHOD_FIELDS and isinstance(value, dict):
            out |= {f"{key}.{option}" for option in value}
        else:
            out.add(key)
    return out


# --- names of values ------------------------------------------------------------------------------------------

def _readable(axis: str, value, depth: int) -> str:
    """A value as a person reads it: a path by its last ``depth`` parts (a ``file:`` task by its first file's
    folder once its name is not enough), a list joined by ``+``, numbers compactly."""
    from minift.plots.runs import short_name

    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    if isinstance(value, str) and (value.startswith("file:") or Path(value).expanduser().exists()):
        text = value[len("file:"):].split(",")[0] if value.startswith("file:") else value
        parts = Path(text.rstrip("/")).parts
        if value.startswith("file:"):  # depth 1: the file's stem; 2: its folder; 3: both
            stem, folder = Path(text).stem, (parts[-2] if len(parts) > 1 else "")
            return {1: stem, 2: folder or stem}.get(depth, f"{folder}/{stem}" if folder else stem)
        return "/".join(parts[-depth:])
    return short_name(axis, value)


def value_labels(axes: dict) -> dict:
    """``(axis, repr(value))`` → a short label, unique within its axis: the value's last part (a model folder's
    name), more of its path where two values would read the same, a hash where even that is not enough."""
    labels = {}
    for axis, values in axes.items():
        unique = {repr(v): v for v in values}
        for depth in (1, 2, 3):
            texts = {r: _readable(axis, v, depth) for r, v in unique.items()}
            if len(set(texts.values())) == len(texts):
                break
        for r, text in texts.items():
            twins = sum(t == text for t in texts.values())
            labels[axis, r] = text if twins == 1 else f"{text}-{zlib.crc32(r.encode()):08x}"
    return labels


def slug(text: str) -> str:
    """A label made safe for a folder name."""
    return re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_") or "none"


def cell_names(cells: list, labels: dict) -> list:
    """``model=roberta-base__task=cola__seed=42`` per cell, from the values of the axes that matter to it."""
    return ["__".join(f"{key}={slug(labels[key, repr(value)])}" for key, value in values.items()) or "cell"
            for values in cells]
