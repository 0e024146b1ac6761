"""The one error type of ``minift.data``: a ``ValueError`` whose message names the file, the line and the fix."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad or missing data: the message names the file (and line) and says what to do."""


def row_error(path: str | Path, line: int | None, problem: str) -> DataError:
    """Build a :class:`DataError` for a malformed row.

    Args:
        path: the file holding the row.
        line: 1-based line number in that file (None when the format has no lines, e.g. a JSON object).
        problem: what is wrong with the row and, where useful, what was expected.
    """
    where = f"{path}, line {line}" if line is not None else f"{path}"
    return DataError(f"{where}: {problem}")
