"""``--save {last,all,best,none}``: what a run leaves on disk once it has ended (minift/train/disk.py), and
``--best-tie {earliest,latest}``: which evaluation is the best when validation ties, recorded in the summary."""
import json
from pathlib import Path

import pytest

from minift.train.config import TrainConfig, TrainConfigError
from minift.train.recipe import train_one


def _checkpoints(out: Path) -> list:
    folder = out / "checkpoints"
    return sorted(p.name for p in folder.glob("step-*")) if folder.is_dir() else []


@pytest.mark.parametrize("save, kept, best", [("last", ["step-3"], True), ("all", ["step-1", "step-2", "step-3"], True),
                                              ("best", [], True), ("none", [], False)])
def test_what_stays_after_the_run(train_config, save, kept, best):
    config = train_config(save=save, max_steps=3, eval_every=1, epochs=1)
    summary = train_one(config)
    out = Path(config.output_dir)
    assert _checkpoints(out) == kept
    assert (out / "best").is_dir() == best
    assert not (out / "checkpoints").exists() or (out / "checkpoints" / "latest.json").is_file()
    if kept:
        latest = json.loads((out / "checkpoints" / "latest.json").read_text())
        assert latest["checkpoint"] == "step-3" and set(latest["kept"]) == set(kept)
    assert summary["save"] == save and summary["test"]  # tested before anything was deleted
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((out / "summary.json").read_text())["test"] == summary["test"]


def test_last_is_resumable_with_more_steps(train_config):
    config = train_config(max_steps=2, eval_every=1, epochs=2)
    train_one(config)
    more = train_one(TrainConfig(**{**config.to_dict(), "resume": config.output_dir, "max_steps": 4}))
    assert more["steps"] == 4 and _checkpoints(Path(config.output_dir)) == ["step-4"]


@pytest.mark.parametrize("tie, best_step", [("earliest", 1), ("latest", 3)])
def test_best_tie(train_config, tie, best_step):
    """A learning rate of 1e-12 leaves the predictions as they were: every evaluation ties."""
    config = train_config(best_tie=tie, lr=1e-12, warmup=0.0, max_steps=3, eval_every=1, epochs=1)
    summary = train_one(config)
    assert summary["best_tie"] == tie and summary["best_step"] == best_step
    evals = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "eval"]
    assert len({e["accuracy"] for e in evals}) == 1 and len(evals) == 3


def test_choices_are_checked():
    assert (TrainConfig().save, TrainConfig().best_tie, TrainConfig().init) == ("last", "earliest", "pretrained")
    for key, value in (("save", "some"), ("best_tie", "middle"), ("init", "zeros")):
        with pytest.raises(TrainConfigError, match=key):
            TrainConfig(**{key: value})
