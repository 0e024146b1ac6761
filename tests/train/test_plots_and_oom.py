"""Curves from a run folder's metrics.jsonl; the message when matplotlib is missing; the OOM message arithmetic."""
import json
import sys

import pytest
import torch
from trainkit import tiny_bert

from minift.train.config import TrainConfig
from minift.train.oom import out_of_memory_message, static_memory
from minift.train.plots import PlotUnavailable, plot_run, plot_runs
from minift.train.plots import main as plots_main


def write_run(folder, offset):
    folder.mkdir()
    lines = [{"type": "train", "step": s, "loss": 1.0 / s + offset} for s in range(1, 6)]
    lines += [{"type": "eval", "step": s, "epoch": 0, "reason": "step", "accuracy": 0.5 + s / 20 - offset}
              for s in (2, 4)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def test_plots_are_png(tmp_path):
    pytest.importorskip("matplotlib")
    one = plot_run(write_run(tmp_path / "a", 0.0))
    both = plot_runs([tmp_path / "a", write_run(tmp_path / "b", 0.1)], tmp_path / "both.png")
    for path in (one, both):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_command_overlays_runs(tmp_path):
    pytest.importorskip("matplotlib")
    runs = [str(write_run(tmp_path / "a", 0.0)), str(write_run(tmp_path / "b", 0.1))]
    assert plots_main([*runs, "--output", str(tmp_path / "cmp.png"), "--labels", "lora,full"]) == 0
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    assert plots_main([str(tmp_path / "none"), "--output", str(tmp_path / "x.png")]) == 2


def test_missing_matplotlib_is_a_clear_message(tmp_path, monkeypatch):
    write_run(tmp_path / "a", 0.0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail as if absent
    with pytest.raises(PlotUnavailable, match=r"pip install 'minift\[plot\]'"):
        plot_run(tmp_path / "a")
    assert plot_run(tmp_path / "a", missing_ok=True) is None


def test_missing_log_is_a_clear_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path)


def test_oom_message_counts_weights_gradients_and_adam_states(tmp_path):
    model = tiny_bert(tmp_path)
    n_all = sum(p.numel() for p in model.parameters())
    for p in model.bert.parameters():
        p.requires_grad_(False)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parts = static_memory(model)
    assert parts == {"weights": 4 * n_all, "gradients": 4 * n_train, "optimizer": 8 * n_train}
    message = out_of_memory_message(model, TrainConfig(method="lora", max_length=64), torch.device("cpu"))
    assert "--batch-size" in message and "--grad-accum" in message
    assert "minift.memory estimate: peak" in message  # the full estimate, activations included
