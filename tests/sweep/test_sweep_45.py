"""The 45-run grid's shape (3 models × 3 tasks × 5 seeds, the course's models-by-tasks report) through
``python -m minift.sweep`` with tiny weightless models (``--init random``) and one step each: killed in the
middle, run again, the finished cells are skipped and the model × task tables come out complete."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import sweepkit


def _sweep(path, log, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny matrices: no thread hand-offs on a shared machine
    return subprocess.Popen([sys.executable, "-m", "minift.sweep", str(path)], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow  # 45 runs in two processes: about 55 s on a loaded 2-core machine
def test_45_run_grid_killed_and_resumed(assets, tmp_path):
    models, tasks = assets
    path = sweepkit.grid_file(tmp_path, models, tasks)
    out = tmp_path / "sweep"
    with open(tmp_path / "first.log", "w") as log:
        first = _sweep(path, log, tmp_path)
        deadline = time.time() + 240
        while len(list(out.glob("*/summary.json"))) < 6:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "the sweep finished no 6 cells in 4 minutes"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)  # a hard kill: nothing is cleaned up
        first.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    assert 6 <= len(finished) < 45

    with open(tmp_path / "second.log", "w") as log:
        second = _sweep(path, log, tmp_path)
        assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    printed = (tmp_path / "second.log").read_text()
    assert f"{len(finished)} of 45 cells already finished" in printed
    for name, stamp in finished.items():  # skipped, not run again
        assert (out / name / "summary.json").stat().st_mtime_ns == stamp
    cells = json.loads((out / "cells.json").read_text())
    assert len(cells) == 45 and {c["status"] for c in cells} == {"finished"}
    assert cells[0]["name"] == "model=roberta-tiny__task=has-w7__seed=42"

    table = (out / "results.md").read_text().split("### ")[1]  # the main metric's model × task table
    lines = table.splitlines()
    assert lines[2] == "| model | trainable | % | has-w7 (accuracy) | length (accuracy) | share (pearson) |"
    assert [line.split(" | ")[0] for line in lines[4:7]] == ["| roberta-tiny", "| bert-tiny", "| scibert-tiny"]
    for line in lines[4:7]:
        assert line.count(" ± ") == 3 and "(n=" not in line and "—" not in line
    assert (out / "results.tex").read_text().count(r"\toprule") >= 1
    assert len((out / "results.csv").read_text().splitlines()) > 9


def test_sigterm_stops_the_sweep_and_the_same_command_goes_on(assets, tmp_path):
    """SIGTERM (a batch system's stop) checkpoints the running cell, as in minift.train, writes the tables of what
    finished and ends the sweep; the same command finishes it."""
    models, tasks = assets
    path = sweepkit.grid_file(tmp_path, {"bert-tiny": models["bert-tiny"]}, {"length": tasks["length"]},
                              seeds=[1, 2, 3], max_steps=3, eval_every=1)
    out = tmp_path / "sweep"
    with open(tmp_path / "first.log", "w") as log:
        first = _sweep(path, log, tmp_path)
        deadline = time.time() + 240
        while not list(out.glob("*/summary.json")):
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        code = first.wait(timeout=120)
    assert code in (143, -signal.SIGTERM), (tmp_path / "first.log").read_text()[-3000:]
    done = len(list(out.glob("*/summary.json")))
    if code == 143:  # stopped by minift (not between two cells, where SIGTERM ends the process at once)
        assert "run the same sweep command again" in (tmp_path / "first.log").read_text()
        assert (out / "results.md").is_file()
    with open(tmp_path / "second.log", "w") as log:
        assert _sweep(path, log, tmp_path).wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert f"{done} of 3 cells already finished" in (tmp_path / "second.log").read_text()
    assert {c["status"] for c in json.loads((out / "cells.json").read_text())} == {"finished"}
