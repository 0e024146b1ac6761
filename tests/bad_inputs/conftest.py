"""Fixtures of the bad-input suite (issue 14: what a careless or unlucky user does to ``python -m minift.train``).

Every test runs the command — in-process through ``minift.train.__main__.main(argv)`` where it can, as a subprocess
where a real signal or exit status needs one — on the kit's tiny BERT and CSV task (``kit.cli_assets``: 32 training
examples, batches of 8, so 4 steps an epoch and a run takes seconds), and checks the exit status, that the message
names the problem (and is not a traceback), and that a run folder that was there before is byte-identical after.
"""
from __future__ import annotations

import shutil
import signal
from pathlib import Path

import kit
import pytest
from badkit import Assets, one_thread


@pytest.fixture(autouse=True)
def _wide_console_one_thread(monkeypatch):
    """Messages on one line (rich wraps at the terminal's width) so that tests can look for a whole path; one torch
    thread (a tiny model runs faster so, and steadier on a busy machine)."""
    monkeypatch.setenv("COLUMNS", "4000")
    monkeypatch.delenv("MINIFT_DEBUG", raising=False)
    with one_thread():
        yield


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Assets:
    root = tmp_path_factory.mktemp("assets")
    model, task = kit.cli_assets(root, n_train=32, n_test=8)
    return Assets(root, model, task)


@pytest.fixture
def cli(capsys):
    """``cli(argv) -> (exit status, stderr on one line)``: the command in-process."""
    from minift.train.__main__ import main

    def run(argv: list) -> tuple:
        capsys.readouterr()
        status = main([str(a) for a in argv])
        return status, " ".join(capsys.readouterr().err.split())

    return run


def _made_run(tmp_path_factory, name: str, argv: list) -> Path:
    from minift.train.__main__ import main

    out = tmp_path_factory.mktemp(name) / "run"
    with one_thread():
        assert main([*argv, "--output-dir", str(out)]) in (0, 143)
    return out


@pytest.fixture(scope="session")
def _finished(tmp_path_factory, assets) -> Path:
    return _made_run(tmp_path_factory, "finished", assets.args(None))


@pytest.fixture
def finished_run(_finished, tmp_path) -> Path:
    """A copy of a finished run's folder (one epoch, 4 steps): config, metrics, checkpoints, best/, summary."""
    return Path(shutil.copytree(_finished, tmp_path / "run"))


@pytest.fixture(scope="session")
def _two_checkpoints(tmp_path_factory, assets) -> Path:
    import os

    from minift.train import recipe

    real, steps = recipe.optimizer_step, [0]

    def step_then_sigterm(*args, **kwargs):  # SIGTERM during step 3: the run checkpoints it and stops
        real(*args, **kwargs)
        steps[0] += 1
        if steps[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    recipe.optimizer_step = step_then_sigterm
    try:
        return _made_run(tmp_path_factory, "two", assets.args(None, "--epochs", "2", "--save-every-steps", "1",
                                                                   "--eval-every", "2"))
    finally:
        recipe.optimizer_step = real


@pytest.fixture
def two_checkpoints(_two_checkpoints, tmp_path) -> Path:
    """A copy of a run stopped by SIGTERM at step 3 (of 8) that keeps its checkpoints step-3 and step-2, and best/
    (validated at step 2)."""
    return Path(shutil.copytree(_two_checkpoints, tmp_path / "run"))


@pytest.fixture
def quiet_signals():
    """SIGTERM / SIGHUP that reach the test process outside a run (a timer that fired late) do nothing."""
    names = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    previous = {s: signal.signal(s, lambda signum, frame: None) for s in names}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)
