"""Low-level readers shared by the task readers: decoded lines, CSV/TSV records and JSON lines, each with
the file and 1-based line number so that a malformed row can be reported where it is."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from minift.data.errors import DataError, row_error


def read_text(path: Path, encoding: str = "utf-8", fallback: str | None = None) -> str:
    """The whole file decoded; a decoding error names the file and the line of the first bad byte.

    Args:
        path: the file.
        encoding: the expected encoding (strict).
        fallback: an encoding to use instead when ``encoding`` fails for the whole file (Financial
            PhraseBank ships ISO-8859-1 and UTF-8 files side by side). None: a bad byte is an error.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        if fallback is not None:
            return raw.decode(fallback)
        line = raw[: err.start].count(b"\n") + 1
        raise row_error(path, line, f"bad encoding: byte {raw[err.start]:#04x} is not valid {encoding} "
                        f"({err.reason}); re-save the file as {encoding}") from None
    return text.lstrip("\ufeff")  # MRPC's GLUE files start with a UTF-8 byte-order mark


def read_lines(path: Path, encoding: str = "utf-8", fallback: str | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line without its end-of-line) for every line of the file."""
    yield from enumerate(read_text(path, encoding, fallback).splitlines(), start=1)


def read_delimited(path: Path, delimiter: str, quoting: int = csv.QUOTE_MINIMAL) -> Iterator[tuple[int, list[str]]]:
    """(first line number of the record, fields) for every non-empty record of a CSV/TSV file.

    Backslashes are data, not escapes (AG News writes its newlines as ``\\``); ``""`` inside a quoted
    field is a quote, as in RFC 4180. ``quoting=csv.QUOTE_NONE`` reads TSV files whose text holds stray quotes.
    """
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter, quoting=quoting,
                        doublequote=True, escapechar=None, strict=True)
    last = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise row_error(path, reader.line_num, f"malformed {delimiter!r}-separated row: {err}") from None
        start, last = last + 1, reader.line_num
        if row and any(field.strip() for field in row):
            yield start, row


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON-lines file."""
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise row_error(path, number, f"not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise row_error(path, number, f"expected a JSON object, got {type(obj).__name__}")
        yield number, obj


def read_json(path: Path) -> object:
    """A whole JSON document; a syntax error names the file and line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise row_error(path, err.lineno, f"not valid JSON ({err.msg} at column {err.colno})") from None


def require_text(path: Path, line: int | None, value: object, column: str) -> str:
    """``value`` as a non-empty string, else an error naming the column."""
    if not isinstance(value, str) or not value.strip():
        raise row_error(path, line, f"missing text in column {column!r} (got {value!r})")
    return value


def check_columns(path: Path, line: int, row: list[str], expected: int) -> None:
    """Error unless the row has exactly ``expected`` columns."""
    if len(row) != expected:
        raise row_error(path, line, f"expected {expected} columns, found {len(row)}: {row[:expected + 1]!r}")


def label_index(path: Path, line: int | None, value: object, label_names: list[str]) -> int:
    """The index of ``value`` in ``label_names``, else an error listing the known labels."""
    key = str(value).strip()
    try:
        return label_names.index(key)
    except ValueError:
        raise row_error(path, line, f"unknown label {value!r}; expected one of {label_names}") from None


def nonempty(split: str, examples: list, source: object) -> list:
    """``examples`` unless it is empty, in which case the split and its source are named."""
    if not examples:
        raise DataError(f"split {split!r} is empty: no examples were read from {source}")
    return examples
