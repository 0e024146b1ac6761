"""Ctrl-C, SIGTERM and SIGHUP as requests: the run checkpoints and stops at the next optimizer step instead of
dying mid-step.

A cluster's time limit sends SIGTERM, a closed terminal SIGHUP, a user Ctrl-C (SIGINT): the first one of any of
them asks the loop to stop (:class:`StopRequest`); a second one stops at once by raising :class:`Interrupted` where
the program is (a checkpoint being written is then removed, see ``checkpoint.save_checkpoint``). Outside the loop
(:func:`immediate_stops`: while the model loads, during the final test) the first signal stops at once.

Exit statuses follow the shell's convention, 128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM, 129 for
SIGHUP. A signal the process was started to ignore (``nohup`` ignores SIGHUP) stays ignored.
"""
from __future__ import annotations

import contextlib
import signal

from minift.train import distributed

SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """Raised where the program is by a signal that stops at once; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_status(signum: int) -> int:
    """The shell's status of a process ended by ``signum``: 128 + its number (130 for Ctrl-C)."""
    return 128 + int(signum)


def _raise(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def _handlers(handler):
    """Install ``handler`` for SIGINT, SIGTERM and SIGHUP (those not ignored), and restore the previous ones."""
    previous = {}
    try:
        for signum in SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def immediate_stops():
    """A context in which SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` at once (a KeyboardInterrupt, as
    Ctrl-C does by default): nothing trained yet or nothing left to save, so stopping now loses nothing."""
    return _handlers(_raise)


class StopRequest:
    """A context that turns the first SIGINT / SIGTERM / SIGHUP into ``requested`` (``signum`` says which); a
    second one raises :class:`Interrupted` at once."""

    def __init__(self):
        self.signum: int | None = None
        self._context = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum

    def __enter__(self):
        self._context = _handlers(self._handler)
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)

    def poll(self, save_due: bool = False) -> tuple:
        """(stop, save): whether any process was interrupted, and whether any says a checkpoint is due (process 0
        keeps the clock); one collective under torchrun, so that all processes act at the same step."""
        stop, save = distributed.any_of(self.requested, save_due)
        return stop, save
