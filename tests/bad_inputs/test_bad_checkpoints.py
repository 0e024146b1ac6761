"""Garbage on --resume (issue 14): a truncated trainable / optimizer / RNG / state file or a garbage latest.json is one
message naming the file, and the checkpoint before it is used when there is one; the result is the same as if
nothing had happened."""
import json

import pytest
import torch
from badkit import fingerprint, one_thread
from safetensors.torch import load_file

from minift.train.checkpoint import find_checkpoint

FILES = ["trainable.safetensors", "optimizer.safetensors", "rng-rank0.safetensors", "rng-rank0.json", "state.json"]


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.fixture(scope="module")
def straight(tmp_path_factory, assets):
    """The same run as ``two_checkpoints``, not interrupted: 8 steps."""
    from minift.train.__main__ import main

    out = tmp_path_factory.mktemp("straight") / "run"
    with one_thread():
        assert main(assets.args(out, "--epochs", "2", "--save-every-steps", "1", "--eval-every", "2")) == 0
    return out


def _same_result(run, straight):
    a, b = (load_file(find_checkpoint(r) / "trainable.safetensors") for r in (run, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summaries = [json.loads((r / "summary.json").read_text()) for r in (run, straight)]
    assert summaries[0]["test"] == summaries[1]["test"] and summaries[0]["steps"] == summaries[1]["steps"] == 8


@pytest.mark.parametrize("name", FILES)
def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(cli, two_checkpoints, straight, name):
    damaged = two_checkpoints / "checkpoints" / "step-3" / name
    _truncate(damaged)
    status, err = cli(["--resume", two_checkpoints])
    assert status == 0 and "Traceback" not in err
    assert f"{damaged} cannot be read, it is truncated or corrupt" in err
    assert f"resumed from {two_checkpoints / 'checkpoints' / 'step-2'} instead" in err
    _same_result(two_checkpoints, straight)


@pytest.mark.parametrize("name", FILES)
def test_a_damaged_only_checkpoint_is_one_message_and_changes_nothing(cli, two_checkpoints, name):
    checkpoints = two_checkpoints / "checkpoints"
    for path in (checkpoints / "step-2").iterdir():
        path.unlink()
    (checkpoints / "step-2").rmdir()
    (checkpoints / "latest.json").write_text(json.dumps({"checkpoint": "step-3", "step": 3, "kept": ["step-3"]}))
    damaged = checkpoints / "step-3" / name
    _truncate(damaged)
    before = fingerprint(two_checkpoints)
    status, err = cli(["--resume", two_checkpoints])
    assert status == 2 and "Traceback" not in err
    assert f"no readable checkpoint: {damaged} cannot be read" in err
    assert fingerprint(two_checkpoints) == before


def test_a_garbage_latest_json_is_named_and_the_newest_checkpoint_used(cli, two_checkpoints, straight):
    latest = two_checkpoints / "checkpoints" / "latest.json"
    latest.write_bytes(b"\x00garbage{")
    status, err = cli(["--resume", two_checkpoints])
    assert status == 0 and f"{latest} cannot be read" in err
    assert f"resumed from {two_checkpoints / 'checkpoints' / 'step-3'} instead" in err
    _same_result(two_checkpoints, straight)


def test_garbage_latest_json_and_a_damaged_newest_checkpoint(cli, two_checkpoints, straight):
    (two_checkpoints / "checkpoints" / "latest.json").write_text('{"checkpoint": 3}')
    _truncate(two_checkpoints / "checkpoints" / "step-3" / "optimizer.safetensors")
    status, err = cli(["--resume", two_checkpoints])
    assert status == 0 and f"resumed from {two_checkpoints / 'checkpoints' / 'step-2'} instead" in err
    _same_result(two_checkpoints, straight)


def test_an_explicit_checkpoint_folder_that_is_missing(cli, two_checkpoints):
    before = fingerprint(two_checkpoints)
    missing = two_checkpoints / "checkpoints" / "step-9"
    status, err = cli(["--resume", missing])
    assert status == 2 and f"no readable checkpoint: {missing} is missing" in err and "Traceback" not in err
    assert fingerprint(two_checkpoints) == before


def test_best_weights_caught_between_their_two_renames_are_recovered(cli, finished_run):
    """save_weights moves best/ to best.old, then best.tmp (complete) to best/: a crash in between leaves no
    best/. The test of a resumed (finished) run finds the weights and puts them back in place."""
    before = json.loads((finished_run / "summary.json").read_text())["test"]
    best = finished_run / "best"
    best.rename(finished_run / "best.tmp")
    (finished_run / "best.old").mkdir()  # the earlier best weights (their content does not matter here)
    status, _ = cli(["--resume", finished_run])
    assert status == 0 and best.is_dir() and not (finished_run / "best.tmp").exists()
    assert not (finished_run / "best.old").exists()
    assert json.loads((finished_run / "summary.json").read_text())["test"] == before
