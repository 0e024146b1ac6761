"""Custom tasks from the user's own files: ``file:PATH`` with CSV (``.csv``), TSV (``.tsv``/``.txt``) or JSON
lines (``.jsonl``/``.json``), a text column (optionally a second text column for pairs) and a label column.

``PATH`` is one file (split 9:1 into train/test with the library's fixed seed), a comma-separated list
``TRAIN,TEST`` or ``TRAIN,DEV,TEST``, or a folder holding ``train.*`` and ``test.*`` (``dev.*`` optional); a
path that exists as it is is one file even when it holds a comma. CSV/TSV files must have a header row naming
the columns.

What a careless file gets is an error naming the file, the row and what to do: a TSV or JSON-lines file saved as
``.csv``, a missing header row, an empty label, labels that are numbers but for a few rows (a typo such as
``n/a`` would otherwise turn a regression task into a classification with one class per value), and a training
split with a single class.

``kind="causal-lm"`` reads the labels as classes (``minift.data.tasks`` adds the prompt and label words);
``kind="sft"`` files hold conversations instead and are read by ``minift.data.sft`` (the same ``PATH`` forms).
"""
from __future__ import annotations

import math
from pathlib import Path

from minift.data.errors import DataError, row_error
from minift.data.example import Example, seeded_split
from minift.data.readers_common import check_columns, nonempty, read_delimited, read_jsonl, require_text
from minift.data.readers_text import SPLIT_SEED

SUFFIXES = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".jsonl": None, ".json": None}
# What a file: task can be (--task-kind): the labels read as classes or numbers, generated after a prompt
# (causal-lm, read as classes here), or conversations for instruction tuning (sft, read by minift.data.sft).
FILE_KINDS = ("classification", "regression", "causal-lm", "sft")


def _header_problem(path: Path, header: list[str], columns: list[str]) -> str:
    """Why a header row lacking ``columns`` is wrong, and what to do."""
    first = ",".join(header) if len(header) > 1 else header[0] if header else ""
    if path.suffix.lower() == ".csv" and len(header) == 1 and "\t" in first:
        return f"{path.name} is tab-separated, not comma-separated: rename it to .tsv"
    if first.lstrip().startswith("{"):
        return f"{path.name} holds JSON lines, not CSV: rename it to .jsonl"
    looks_like_data = any(any(ch.isdigit() for ch in c) or len(c.split()) > 3 for c in header)
    if looks_like_data:
        return (f"the first row {header[:4]} is not a header: CSV/TSV files need a first row naming the columns "
                f"(e.g. {','.join(columns)}); add one, or name your columns with --text-column / --label-column")
    missing = [c for c in columns if c not in header]
    return (f"header {header} lacks the column(s) {missing}; name the file's columns with --text-column / "
            "--label-column (and --text-pair-column)")


def read_rows(path: Path, columns: list[str]):
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
            if any(c not in header for c in columns):
                raise row_error(path, line, _header_problem(path, header, columns))
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


def split_paths(spec: str) -> dict[str, Path]:
    whole = Path(spec).expanduser()
    parts = [whole] if whole.exists() else [Path(p).expanduser() for p in spec.split(",") if p]
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
    paths = split_paths(spec)
    raw = {split: list(read_rows(path, columns)) for split, path in paths.items()}
    for split, rows in raw.items():
        nonempty(split, rows, paths[split])
    _check_labels(raw, paths, label_column)
    if kind is None:
        kind = _guess_kind(raw, paths, label_column)
    if kind not in ("classification", "regression"):
        raise DataError(f"file:{spec}: kind must be 'classification' or 'regression', got {kind!r}")
    label_names: list[str] = []
    if kind == "classification":
        train_split = "train" if "train" in raw else "all"
        seen = {str(row[label_column]).strip() for _, row in raw[train_split]}
        label_names = sorted(seen, key=lambda v: (int(v), v) if _is_int(v) else (math.inf, v))
        if len(label_names) < 2:
            raise DataError(f"{paths[train_split]}: every training row has the label {label_names[0]!r}; a "
                            f"classifier needs at least two classes. Check --label-column ({label_column!r}), or "
                            "pass --task-kind regression if the labels are scores")
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


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _check_labels(raw: dict, paths: dict, label_column: str) -> None:
    """An empty label is an error naming its row (it would otherwise become a class named '')."""
    for split, rows in raw.items():
        for line, row in rows:
            if row[label_column] is None or not str(row[label_column]).strip():
                raise row_error(paths[split], line, f"empty label in column {label_column!r}: fill it in or drop "
                                "the row")


def _guess_kind(raw: dict, paths: dict, label_column: str) -> str:
    """regression when every label is a number and some is not an integer; classification when none (or all, as
    integers) are numbers; an error when most labels are numbers but some are not (a typo such as 'n/a')."""
    rows = [(split, line, str(row[label_column]).strip()) for split, split_rows in raw.items()
            for line, row in split_rows]
    odd = [(split, line, value) for split, line, value in rows if not _is_number(value)]
    if not odd:
        return "classification" if all(_is_int(value) for _, _, value in rows) else "regression"
    if len(odd) * 2 < len(rows):  # most labels are numbers: the others are probably mistakes
        where = ", ".join(f"{paths[split].name}:{line} {value!r}" for split, line, value in odd[:5])
        more = f" and {len(odd) - 5} more" if len(odd) > 5 else ""
        raise DataError(f"column {label_column!r}: {len(rows) - len(odd)} of {len(rows)} labels are numbers but "
                        f"{len(odd)} are not ({where}{more}). Fix those rows, or say what the task is with "
                        "--task-kind regression (every label must then be a number) or --task-kind classification "
                        "(every distinct label becomes a class)")
    return "classification"
