"""Readers for the GLUE tasks in their original distributions: SST-2, CoLA, STS-B and MRPC.
Each returns ``(splits, label_names)`` (label names empty for the STS-B regression)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from minift.data.errors import row_error
from minift.data.example import Example
from minift.data.readers_common import check_columns, label_index, nonempty, read_delimited, require_text

BINARY_LABELS = ["0", "1"]
SST2_LABELS = ["negative", "positive"]
COLA_LABELS = ["unacceptable", "acceptable"]
MRPC_LABELS = ["not_equivalent", "equivalent"]


def _tsv(path: Path):
    # GLUE's TSVs are not quoted: a '"' in a sentence is text.
    return read_delimited(path, "\t", quoting=csv.QUOTE_NONE)


def read_sst2(root: Path):
    """SST-2 ``{train,dev,test}.tsv`` with header ``sentence<TAB>label`` (test = GLUE's labelled dev)."""
    splits = {}
    for split in ("train", "dev", "test"):
        path = root / f"{split}.tsv"
        examples = []
        for line, row in _tsv(path):
            if line == 1 and row[0].strip() == "sentence":
                continue
            check_columns(path, line, row, 2)
            text = require_text(path, line, row[0].strip(), "sentence")
            examples.append(Example(text=text, label=label_index(path, line, row[1], BINARY_LABELS),
                                    id=f"{split}:{line}"))
        splits[split] = nonempty(split, examples, path)
    return splits, list(SST2_LABELS)


def _read_cola_file(path: Path) -> list[Example]:
    examples = []
    for line, row in _tsv(path):
        check_columns(path, line, row, 4)  # source, label, original mark, sentence
        text = require_text(path, line, row[3].strip(), "sentence")
        examples.append(Example(text=text, label=label_index(path, line, row[1], BINARY_LABELS),
                                id=f"{path.name}:{line}"))
    return nonempty(path.stem, examples, path)


def read_cola(root: Path):
    """CoLA v1.0: train = ``in_domain_train.tsv`` (8,551); test = GLUE's dev set, the in-domain and
    out-of-domain dev files together (527 + 516 = 1,043)."""
    train = _read_cola_file(root / "in_domain_train.tsv")
    test = _read_cola_file(root / "in_domain_dev.tsv") + _read_cola_file(root / "out_of_domain_dev.tsv")
    return {"train": train, "test": test}, list(COLA_LABELS)


def read_stsb(root: Path):
    """STS-B ``stsb-en-{train,dev,test}.csv``: quoted CSV without header, sentence1, sentence2, score 0-5."""
    splits = {}
    for split in ("train", "dev", "test"):
        path = root / f"stsb-en-{split}.csv"
        examples = []
        for line, row in read_delimited(path, ","):
            check_columns(path, line, row, 3)
            first = require_text(path, line, row[0], "sentence1")
            second = require_text(path, line, row[1], "sentence2")
            try:
                score = float(row[2])
            except ValueError:
                raise row_error(path, line, f"score {row[2]!r} is not a number") from None
            if not math.isfinite(score):
                raise row_error(path, line, f"score {row[2]!r} is not a finite number")
            examples.append(Example(text=first, text_pair=second, label=score, id=f"{split}:{line}"))
        splits[split] = nonempty(split, examples, path)
    return splits, []


def _read_mrpc_file(path: Path, split: str) -> list[Example]:
    examples = []
    for line, row in _tsv(path):
        if line == 1 and row[0].strip() == "Quality":
            continue
        check_columns(path, line, row, 5)  # Quality, #1 ID, #2 ID, #1 String, #2 String
        first = require_text(path, line, row[3].strip(), "#1 String")
        second = require_text(path, line, row[4].strip(), "#2 String")
        examples.append(Example(text=first, text_pair=second, label=label_index(path, line, row[0], BINARY_LABELS),
                                id=f"{row[1]}-{row[2]}"))
    return nonempty(split, examples, path)


def read_mrpc(root: Path):
    """MRPC: GLUE ``train.tsv`` (3,668) / ``dev.tsv`` (408); the labelled test set (1,725) from
    ``msr_paraphrase_test.txt`` because GLUE's ``test.tsv`` has no labels."""
    splits = {"train": _read_mrpc_file(root / "train.tsv", "train"),
              "dev": _read_mrpc_file(root / "dev.tsv", "dev"),
              "test": _read_mrpc_file(root / "msr_paraphrase_test.txt", "test")}
    return splits, list(MRPC_LABELS)
