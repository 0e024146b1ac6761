"""``python -m minift.plots`` and the file API: what a run folder, a ``--seeds`` folder and a sweep get; exit codes
and messages for a folder without runs, a bad --by/--metric and a missing matplotlib; the old import path."""
import subprocess
import sys

import pytest
from plotkit import write_grid, write_run

from minift.plots import PlotUnavailable, plot_folder, plot_run, plot_runs
from minift.plots.__main__ import main

PNG = b"\x89PNG\r\n\x1a\n"


def names(paths) -> list:
    return sorted(p.name for p in paths)


def test_run_folder_gets_its_curves(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = write_run(tmp_path / "run")
    assert main([str(run)]) == 0
    assert (run / "curves.png").read_bytes()[:8] == PNG
    assert f"wrote {run / 'curves.png'}" in capsys.readouterr().out
    assert main([str(run), "--out", str(tmp_path / "figs"), "--format", "pdf"]) == 0
    assert (tmp_path / "figs" / "curves.pdf").read_bytes()[:4] == b"%PDF"


def test_png_is_300_dpi_and_small(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    path = plot_run(write_run(tmp_path / "run", eval_every=30))
    with Image.open(path) as image:
        assert image.info["dpi"] == pytest.approx((300, 300), abs=0.1)
        assert image.size[0] == pytest.approx(3.3 * 300, rel=0.05)  # one report column wide
    assert path.stat().st_size < 150_000


def test_seeds_folder_gets_seed_overlay_and_metric_bars(tmp_path):
    pytest.importorskip("matplotlib")
    folder = write_grid(tmp_path / "exp", tasks=("sst2",), methods=("lora",), seeds=(1, 2))
    written = plot_folder(folder / "roberta-base-sst2-lora")
    assert names(written) == ["bars-test.png", "overlay-seeds.png"]
    assert all(p.parent == folder / "roberta-base-sst2-lora" / "figures" for p in written)


def test_sweep_gets_overlays_per_task_and_bars_by_method(tmp_path):
    pytest.importorskip("matplotlib")
    grid = write_grid(tmp_path / "sweep", tasks=("sst2", "cola"), methods=("full", "lora"), seeds=(1, 2))
    written = plot_folder(grid, tmp_path / "out")
    assert names(written) == ["bars-main-by-method.png", "overlay-by-method-cola.png", "overlay-by-method-sst2.png"]
    written = plot_folder(grid, tmp_path / "out", by="task", metric="accuracy")
    # tasks compared: one overlay per method, and one bar chart with the methods on the x axis
    assert names(written) == ["bars-accuracy-by-task.png", "overlay-by-task-full.png", "overlay-by-task-lora.png"]


def test_model_by_task_grid(tmp_path):
    pytest.importorskip("matplotlib")
    grid = write_grid(tmp_path / "sweep", tasks=("sst2", "cola"), methods=("lora",), seeds=(1, 2),
                      models=("bert-base-uncased", "roberta-base"))
    assert main([str(grid), "--by", "model", "--out", str(tmp_path / "out")]) == 0
    assert names((tmp_path / "out").iterdir()) == ["bars-main-by-model.png", "overlay-by-model-cola.png",
                                                   "overlay-by-model-sst2.png"]


def test_folder_without_runs_is_exit_2_with_a_message(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run folders in") and "metrics.jsonl" in err
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_bad_by_and_metric_are_exit_2(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    grid = write_grid(tmp_path / "sweep", tasks=("sst2",), methods=("full", "lora"), seeds=(1,))
    assert main([str(grid), "--by", "model"]) == 2
    assert "every run has the same model; what varies: method" in capsys.readouterr().err
    assert main([str(grid), "--metric", "bleu"]) == 2
    assert "metric 'bleu' is in none of the runs; they have: accuracy, macro_f1, micro_f1" in capsys.readouterr().err


def test_module_command_runs_and_importing_loads_no_matplotlib(tmp_path):
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-m", "minift.plots", str(tmp_path / "empty")], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "error: no run folders" in done.stderr
    probe = "import sys, minift.plots; print('matplotlib' in sys.modules, 'torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.split() == \
        ["False", "False"]


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch, capsys):
    run = write_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail as if absent
    with pytest.raises(PlotUnavailable, match=r"pip install 'minift\[plot\]'"):
        plot_run(run)
    assert plot_run(run, missing_ok=True) is None  # what training does: curves are a bonus there
    assert main([str(run)]) == 2
    assert "pip install 'minift[plot]'" in capsys.readouterr().err


def test_plot_runs_overlays_given_runs(tmp_path):
    pytest.importorskip("matplotlib")
    runs = [write_run(tmp_path / "a", seed=1), write_run(tmp_path / "b", seed=2)]
    path = plot_runs(runs, tmp_path / "curves.png", labels=["seed 1", "seed 2"])
    assert path.read_bytes()[:8] == PNG
