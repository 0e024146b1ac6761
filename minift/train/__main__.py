"""``python -m minift.train --task TASK --method {full,lora,adapter,bitfit,prompt} [options]``.

A thin command over :func:`minift.train.recipe.train_one` and :func:`minift.train.experiment.run_seeds`; run
``python -m minift.train --help`` for every option. Under ``torchrun --nproc_per_node N`` the same command
trains with DistributedDataParallel.

Every error a user can cause (a bad flag, model folder, data file, run folder or checkpoint) is one message that
names the file, key or flag and says what to do; exit status 2. A run that stops early says what was kept and how to
go on: 1 after a NaN loss or running out of memory, 128 + the signal's number after Ctrl-C (130), SIGTERM (143) or
SIGHUP (129). ``--debug`` (or ``MINIFT_DEBUG=1``) adds the traceback, for a bug report.
"""
from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console


def wants_debug(argv: list) -> bool:
    """``--debug`` on the command line or ``MINIFT_DEBUG`` set (to anything but 0 / empty)."""
    return "--debug" in argv or os.environ.get("MINIFT_DEBUG", "0") not in ("", "0")


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    is_main = int(os.environ.get("RANK", "0")) == 0
    console = Console(stderr=True, quiet=not is_main)
    debug = wants_debug(argv)

    def fail(kind: str, err: BaseException, status: int) -> int:
        if debug:
            console.print_exception()
        with contextlib.suppress(OSError):  # no terminal left to print to (SIGHUP)
            console.print(f"[red]{kind}:[/red] {err}", markup=True, highlight=False)
        return status

    try:
        return _run(argv, console)
    except KeyboardInterrupt as err:  # a signal outside a run (while importing torch, between --seeds runs)
        return fail("stopped", f"{err or 'Ctrl-C'}: stopped outside a run, nothing was being written",
                    128 + getattr(err, "signum", 2))
    except Exception as err:
        from minift.data.errors import DataError
        from minift.models.errors import ModelLoadError
        from minift.train.build import TrainSetupError
        from minift.train.checkpoint import CheckpointLoadError
        from minift.train.config import TrainConfigError
        from minift.train.stops import TrainingStopped

        if isinstance(err, TrainingStopped):
            return fail("stopped", err, err.exit_code)
        if isinstance(err, (TrainConfigError, TrainSetupError, DataError, ModelLoadError, CheckpointLoadError)):
            return fail("error", err, 2)
        if isinstance(err, MemoryError):
            return fail("out of memory", err, 1)
        if isinstance(err, OSError) and err.filename is not None:  # a disk that filled up, a folder made read-only
            return fail("error", f"{err.strerror}: {err.filename}", 1)
        raise  # a bug: the traceback is what a report needs


def _run(argv: list, console: Console) -> int:
    from minift.train import distributed
    from minift.train.flags import resolve_config
    from minift.train.progress import RunProgress, summary_table
    from minift.train.recipe import train_one

    try:
        config = resolve_config(argv)
        if config.seeds:
            from minift.train.experiment import run_seeds

            result = run_seeds(config, RunProgress(console), console)
            console.print(result["markdown"])
            console.print(f"tables written to {result['output_dir']}/results.md and results.csv")
        else:
            summary = train_one(config, RunProgress(console))
            console.print(summary_table(summary))
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
