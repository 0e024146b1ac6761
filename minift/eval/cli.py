"""How the inference commands (``python -m minift.eval``, ``minift.generate``, ``minift.export``) report errors.

A mistake a user can make — a missing file, a bad flag value, weights that do not fit the model — ends the command
with one message on stderr that names the file or flag and what to do, and exit status 2, as ``python -m
minift.train`` does; ``--debug`` (or ``MINIFT_DEBUG=1``) raises it instead, with its traceback, for a bug report.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
from typing import Callable

from rich.console import Console


def user_errors() -> tuple:
    """The exception classes of mistakes a user can make (all ``ValueError``\\ s, each with its own message)."""
    from minift.data.errors import DataError
    from minift.eval.trained import TrainedError
    from minift.models.errors import ModelLoadError
    from minift.train.build import TrainSetupError
    from minift.train.checkpoint import CheckpointLoadError
    from minift.train.config import TrainConfigError

    return TrainConfigError, TrainSetupError, DataError, ModelLoadError, CheckpointLoadError, TrainedError, UsageError


class UsageError(ValueError):
    """A command-line combination a command refuses, with what to do instead."""


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``, unless the parser (minift.train's) has it already."""
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument("--debug", action="store_true",
                            help="show the traceback of an error, for a bug report (also: MINIFT_DEBUG=1)")


def debugging(argv: list | None) -> bool:
    import sys

    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("MINIFT_DEBUG", "") not in ("", "0")


def run_command(body: Callable[[], int], argv: list | None, extra_errors: tuple = ()) -> int:
    """``body()``'s exit status; a user error (:func:`user_errors` and ``extra_errors``) is printed as one line
    and gives 2, unless ``--debug`` / ``MINIFT_DEBUG=1``."""
    try:
        return body()
    except (*user_errors(), *extra_errors) as err:
        if debugging(argv):
            raise
        Console(stderr=True).print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        return 2
