"""Running sweeps in this process on tiny weightless models: a failed cell is recorded and the sweep goes on, an
interrupted cell resumes from its checkpoint and one killed before its first checkpoint starts again, finished
cells are skipped, the tables can be rewritten without training, and the figures are drawn."""
import json
from pathlib import Path

import pytest
import sweepkit

from minift.sweep.__main__ import main

SHARED = ["--init", "random", "--max-steps", "1", "--batch-size", "8", "--max-length", "16", "--device", "cpu"]


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


def test_a_failed_cell_is_recorded_and_the_sweep_goes_on(assets, tmp_path, capsys):
    models, tasks = assets
    out = tmp_path / "sweep"
    code, printed = _run(["--grid", "lora_targets=[nope],[query,value] seed=1,2", "--method", "lora", "--model",
                          str(models["bert-tiny"]), "--task", tasks["has-w7"], "--output-dir", str(out),
                          "--plot", "false", *SHARED], capsys)
    assert code == 1
    failed = json.loads((out / "failed.json").read_text())
    assert [f["name"] for f in failed] == ["lora.targets=nope__seed=1", "lora.targets=nope__seed=2"]
    assert "matches no module" in failed[0]["error"] and "Traceback" in failed[0]["traceback"]
    cells = json.loads((out / "cells.json").read_text())
    assert [c["status"] for c in cells] == ["failed", "failed", "finished", "finished"]
    assert "### failed cells" in printed.out and "| query+value | 2,114 |" in printed.out


def test_resume_restart_and_skip(assets, tmp_path, capsys):
    models, tasks = assets
    path = sweepkit.grid_file(tmp_path, {"bert-tiny": models["bert-tiny"]}, {"has-w7": tasks["has-w7"]},
                              seeds=[1, 2, 3])
    assert _run([str(path)], capsys)[0] == 0
    out = tmp_path / "sweep"
    names = [c["name"] for c in json.loads((out / "cells.json").read_text())]
    before = {n: json.loads((out / n / "summary.json").read_text()) for n in names}
    (out / names[0] / "summary.json").unlink()  # killed after its last checkpoint, before its summary
    for p in (out / names[1]).iterdir():  # killed during set-up: only its config was written
        if p.name != "config.json":
            p.unlink() if p.is_file() else __import__("shutil").rmtree(p)
    stamp = (out / names[2] / "summary.json").stat().st_mtime_ns
    code, printed = _run([str(path)], capsys)
    assert code == 0
    assert "1 of 3 cells already finished" in printed.err and f"{names[0]} (resumed from its checkpoint)" in printed.err
    assert (out / names[2] / "summary.json").stat().st_mtime_ns == stamp  # skipped
    for n in names:
        assert json.loads((out / n / "summary.json").read_text())["test"] == before[n]["test"]
    (out / "results.md").unlink()
    code, printed = _run([str(path), "--tables-only"], capsys)
    assert code == 0 and (out / "results.md").is_file() and "(resumed" not in printed.err


def test_figures_of_a_method_sweep(assets, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    models, tasks = assets
    out = tmp_path / "sweep"
    code, printed = _run(["--grid", "method=full,bitfit seed=1,2", "--model", str(models["roberta-tiny"]),
                          "--task", tasks["length"], "--output-dir", str(out), "--eval-every", "1", *SHARED], capsys)
    assert code == 0
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["bars-main-by-method.png", "overlay-by-method.png"]
    assert "| method | trainable | % | accuracy | micro_f1 | macro_f1 |" in printed.out
    assert all((out / c / "curves.png").is_file() for c in ("method=full__seed=1", "method=bitfit__seed=2"))
    assert Path(out / "results.tex").read_text().count(r"\toprule") == 1


def test_a_finished_cell_of_other_settings_is_not_taken(assets, tmp_path, capsys):
    """The sweep file changed after a run finished: its summary is not the cell's result (and is not deleted)."""
    models, tasks = assets
    args = ["--grid", "seed=1", "--model", str(models["bert-tiny"]), "--task", tasks["has-w7"], "--output-dir",
            str(tmp_path / "sweep"), "--plot", "false", "--method", "full", *SHARED]
    assert _run(args, capsys)[0] == 0
    code, printed = _run([*args, "--lr", "0.5"], capsys)
    assert code == 1 and "holds a run with other settings" in printed.out and "--lr 3e-05 → 0.5" in printed.out
