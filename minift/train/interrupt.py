"""Ctrl-C as a request: the run checkpoints and stops at the next optimizer step instead of dying mid-step."""
from __future__ import annotations

import signal

from minift.train import distributed


class StopRequest:
    """A context that turns the first SIGINT into ``requested = True`` (a second one interrupts at once)."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self.requested = True
            signal.signal(signal.SIGINT, self.previous)  # a second Ctrl-C interrupts at once

        try:
            signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: Ctrl-C stays a plain KeyboardInterrupt
            self.previous = None
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def agreed(self) -> bool:
        """True when any process was interrupted (a collective under torchrun, so all stop at the same step)."""
        return distributed.any_process(self.requested)
