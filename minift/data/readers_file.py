"""Custom tasks from the user's own files: ``file:PATH`` with CSV (``.csv``), TSV (``.tsv``/``.txt``) or JSON
lines (``.jsonl``/``.json``), a text column (optionally a second text column for pairs) and a label column.

``PATH`` is one file (split 9:1 into train/test with the library's fixed seed), a comma-separated list
``TRAIN,TEST`` or ``TRAIN,DEV,TEST``, or a folder holding ``train.*`` and ``test.*`` (``dev.*`` optional).
CSV/TSV files must have a header row naming the columns.
"""
from __future__ import annotations

import math
from pathlib import Path

from minift.data.errors import DataError, row_error
from minift.data.example import Example, seeded_split
from minift.data.readers_common import check_columns, nonempty, read_delimited, read_jsonl, require_text
from minift.data.readers_text import SPLIT_SEED

SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".jsonl": None, ".json": None}


def _rows(path: Path, columns: list[str]):
    """(line, {column: raw value}) for every row, checking the header names ``columns``."""
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(SUFFIXES)}")
    delimiter = SUFFIXES[path.suffix.lower()]
    if delimiter is None:
        for line, obj in read_jsonl(path):
            for column in columns:
                if column not in obj:
                    raise row_error(path, line, f"missing column {column!r}; the row has {sorted(obj)}")
            yield line, obj
        return
    header = None
    for line, row in read_delimited(path, delimiter):
        if header is None:
            header = [c.strip() for c in row]
            missing = [c for c in columns if c not in header]
            if missing:
                raise row_error(path, line, f"header {header} lacks the column(s) {missing}; name them with "
                                "--text-column / --label-column")
            continue
        check_columns(path, line, row, len(header))
        yield line, dict(zip(header, row))


def _parse_float(path: Path, line: int, value: object) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise row_error(path, line, f"label {value!r} is not a number (regression task)") from None
    if not math.isfinite(number):
        raise row_error(path, line, f"label {value!r} is not a finite number")
    return number


def _split_paths(spec: str) -> dict[str, Path]:
    parts = [Path(p).expanduser() for p in spec.split(",") if p]
    if len(parts) == 1 and parts[0].is_dir():
        found = {}
        for split in ("train", "dev", "test"):
            matches = sorted(p for p in parts[0].glob(f"{split}.*") if p.suffix.lower() in SUFFIXES)
            if matches:
                found[split] = matches[0]
        if "train" not in found or "test" not in found:
            raise DataError(f"{parts[0]}: a task folder needs train.* and test.* ({sorted(SUFFIXES)}); found "
                            f"{sorted(p.name for p in parts[0].iterdir())}")
        return found
    names = {1: ["all"], 2: ["train", "test"], 3: ["train", "dev", "test"]}.get(len(parts))
    if names is None:
        raise DataError(f"file:{spec}: give one file, TRAIN,TEST or TRAIN,DEV,TEST")
    for path in parts:
        if not path.is_file():
            raise DataError(f"data file not found: {path} (from --task file:{spec})")
    return dict(zip(names, parts))


def read_file_task(spec: str, text_column: str = "text", label_column: str = "label",
                   text_pair_column: str | None = None, kind: str | None = None,
                   test_fraction: float = 0.1, seed: int = SPLIT_SEED):
    """Read a custom task.

    Args:
        spec: what follows ``file:`` (a file, ``TRAIN,TEST``, ``TRAIN,DEV,TEST`` or a folder).
        text_column / text_pair_column / label_column: column names (keys for JSON lines).
        kind: "classification" or "regression"; None: regression when some label is a non-integer
            number, else classification.
        test_fraction / seed: the split of a single file.

    Returns:
        ``(splits, label_names, kind)``; classification label names are the train labels, sorted
        (numerically when they all are integers); a label seen only outside train is an error.
    """
    columns = [text_column] + ([text_pair_column] if text_pair_column else []) + [label_column]
    paths = _split_paths(spec)
    raw = {split: list(_rows(path, columns)) for split, path in paths.items()}
    for split, rows in raw.items():
        nonempty(split, rows, paths[split])
    if kind is None:
        values = [str(row[label_column]).strip() for rows in raw.values() for _, row in rows]
        kind = "regression" if _numbers_not_all_int(values) else "classification"
    if kind not in ("classification", "regression"):
        raise DataError(f"file:{spec}: kind must be 'classification' or 'regression', got {kind!r}")
    label_names: list[str] = []
    if kind == "classification":
        train_rows = raw["train" if "train" in raw else "all"]
        seen = {str(row[label_column]).strip() for _, row in train_rows}
        label_names = sorted(seen, key=lambda v: (int(v), v) if _is_int(v) else (math.inf, v))
    splits = {}
    for split, rows in raw.items():
        path, examples = paths[split], []
        for line, row in rows:
            text = require_text(path, line, row[text_column], text_column)
            pair = require_text(path, line, row[text_pair_column], text_pair_column) if text_pair_column else None
            value = str(row[label_column]).strip()
            if kind == "regression":
                label = _parse_float(path, line, value)
            elif value in label_names:
                label = label_names.index(value)
            else:
                raise row_error(path, line, f"unknown label {value!r}: not among the train labels {label_names}")
            examples.append(Example(text=text, text_pair=pair, label=label, id=f"{path.name}:{line}"))
        splits[split] = examples
    if "all" in splits:
        train, test = seeded_split(splits.pop("all"), test_fraction, seed)
        splits = {"train": nonempty("train", train, spec), "test": nonempty("test", test, spec)}
    return splits, label_names, kind


def _is_int(value: str) -> bool:
    return value.lstrip("+-").isdigit()


def _numbers_not_all_int(values: list[str]) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return not all(_is_int(v) for v in values)
