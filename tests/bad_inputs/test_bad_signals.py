"""Progress lost and raw tracebacks on signals (issue 14): SIGTERM / SIGHUP checkpoint like Ctrl-C, a second signal
stops at once without leaving a half-written checkpoint, checkpoints by time or steps, Ctrl-C while the model loads."""
import json
import os
import signal
import time

import pytest
from badkit import fingerprint, leftovers, spawn

from minift.train import build, savestate
from minift.train.checkpoint import find_checkpoint, read_checkpoint
from minift.train.config import TrainConfig


def _train_steps(run) -> list:
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [r["step"] for r in map(json.loads, lines[:-1]) if r["type"] == "train"]  # the last may be cut short


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (getattr(signal, "SIGHUP", None), 129)])
def test_sigterm_and_sighup_checkpoint_mid_epoch_and_resume_finishes(assets, cli, tmp_path, signum, status):
    """A cluster's time limit (SIGTERM) or a closed terminal (SIGHUP) in the middle of the only epoch: the run saves
    that step and says how to resume; --resume ends the epoch."""
    if signum is None:
        pytest.skip("no SIGHUP here")
    run = tmp_path / "run"
    process = spawn(assets.args(run, "--log-every", "1", "--epochs", "1", "--batch-size", "1"))  # 32 steps
    deadline = time.time() + 300
    while time.time() < deadline and not [s for s in _train_steps(run) if s >= 2] and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signum)
    output = " ".join(process.communicate(timeout=300)[0].split())
    assert process.returncode == status, output
    name = signal.Signals(signum).name
    assert f"{name}: stopped at step" in output and f"--resume {run}" in output and "Traceback" not in output
    loop = read_checkpoint(find_checkpoint(run)).state["loop"]
    assert 2 <= loop["step"] < 32 and loop["epoch"] == 0 and loop["stopped"] == ""
    status, _ = cli(["--resume", run])
    assert status == 0 and json.loads((run / "summary.json").read_text())["steps"] == 32


def test_a_second_signal_during_a_checkpoint_write_stops_at_once_and_leaves_no_tmp(assets, cli, tmp_path,
                                                                                   monkeypatch):
    real, writes = savestate.atomic_write_bytes, [0]

    def write(path, data):  # two SIGTERMs while the third checkpoint writes its trainable tensors
        writes[0] += 1
        if path.name == "trainable.safetensors" and path.parent.name == "step-3.tmp":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.002)  # the first one is handled before the second arrives
            os.kill(os.getpid(), signal.SIGTERM)
        real(path, data)

    monkeypatch.setattr(savestate, "atomic_write_bytes", write)
    run = tmp_path / "run"
    status, err = cli(assets.args(run, "--save-every-steps", "1"))
    assert status == 143 and "Traceback" not in err
    assert f"a second SIGTERM stopped the run at once, after step 3: the last complete checkpoint is " \
           f"{run / 'checkpoints' / 'step-2'}; continue with `python -m minift.train --resume {run}`" in err
    assert leftovers(run) == [] and find_checkpoint(run).name == "step-2"
    monkeypatch.setattr(savestate, "atomic_write_bytes", real)
    assert cli(["--resume", run])[0] == 0


def test_what_a_killed_run_left_is_cleaned_up_by_the_next_start(cli, two_checkpoints):
    """kill -9 mid-write leaves step-N.tmp, .<name>.tmp-<pid> files, an unfinished best.tmp: the next start
    removes them, and a best/ replaced half-way (best.old + a complete best.tmp, no best/) is finished."""
    checkpoints = two_checkpoints / "checkpoints"
    (checkpoints / "step-4.tmp").mkdir()
    (checkpoints / "step-4.tmp" / "rng-rank0.safetensors").write_bytes(b"\0" * 10)
    (checkpoints / ".latest.json.tmp-4242").write_text("{")
    (two_checkpoints / ".summary.json.tmp-4242").write_text("{")
    best = two_checkpoints / "best"
    os.replace(best, two_checkpoints / "best.old")  # killed between save_weights' two renames
    (two_checkpoints / "best.tmp").mkdir()
    for f in (two_checkpoints / "best.old").iterdir():
        (two_checkpoints / "best.tmp" / f.name).write_bytes(f.read_bytes())
    status, _ = cli(["--resume", two_checkpoints])
    assert status == 0 and leftovers(two_checkpoints) == [] and best.is_dir()


def test_checkpoints_by_steps_and_by_time_and_their_default():
    assert TrainConfig().save_every_minutes == 10 and TrainConfig().save_every_steps == 0


@pytest.mark.parametrize("flag, value", [("--save-every-steps", "2"), ("--save-every-minutes", "0.00001")])
def test_a_run_killed_outright_loses_minutes_not_the_epoch(assets, tmp_path, flag, value):
    """SIGKILL (nothing can be saved then) in the middle of the only epoch, evaluated only at its end: the
    checkpoint written by steps or by time is there to resume from."""
    run = tmp_path / "run"
    process = spawn(assets.args(run, "--log-every", "1", "--batch-size", "1", flag, value))
    deadline = time.time() + 300
    while time.time() < deadline and not [s for s in _train_steps(run) if s >= 6] and process.poll() is None:
        time.sleep(0.05)
    process.kill()
    process.communicate(timeout=300)
    loop = read_checkpoint(find_checkpoint(run)).state["loop"]
    assert 4 <= loop["step"] < 32 and loop["epoch"] == 0  # mid-epoch: at most a step or two lost


@pytest.mark.parametrize("signum, status, name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_while_the_model_loads_ends_cleanly(assets, cli, finished_run, monkeypatch, signum, status, name):
    real = build.load_pretrained

    def loading(*args, **kwargs):
        os.kill(os.getpid(), signum)  # arrives while the weights are read
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "load_pretrained", loading)
    before = fingerprint(finished_run)
    got, err = cli(assets.args(finished_run, "--overwrite"))
    assert got == status and f"{name} during set-up: stopped before training; {finished_run} was not written to" in err
    assert "Traceback" not in err and fingerprint(finished_run) == before
