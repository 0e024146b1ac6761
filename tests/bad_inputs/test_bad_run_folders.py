"""Data lost (issue 14): a run folder is never written by two runs, and a failed start writes nothing."""
import json
import os
import shutil
from datetime import datetime

import pytest
from badkit import fingerprint

from minift.train import runfolder


def test_a_finished_run_folder_is_refused_and_left_byte_identical(assets, cli, finished_run):
    before = fingerprint(finished_run)
    status, err = cli(assets.args(finished_run))
    assert status == 2 and "Traceback" not in err
    assert f"--output-dir {finished_run} already holds a run that ended (completed after 4 steps, test accuracy" in err
    assert f"--resume {finished_run}" in err and "--overwrite" in err
    assert fingerprint(finished_run) == before


def test_overwrite_replaces_the_earlier_run_and_keeps_other_files(assets, cli, finished_run):
    (finished_run / "notes.txt").write_text("mine")
    status, _ = cli(assets.args(finished_run, "--overwrite", "--max-steps", "2", "--save-every-steps", "1"))
    assert status == 0
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["stopped"] == "max_steps"
    steps = [json.loads(line)["step"] for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and max(steps) == 2  # the earlier run's lines are gone, not mixed in
    names = {p.name for p in (finished_run / "checkpoints").iterdir()}
    assert "step-2" in names and "step-4" not in names  # the earlier run's checkpoint (step 4) is gone
    assert (finished_run / "notes.txt").read_text() == "mine"


def _without_weights(assets, tmp_path):
    folder = shutil.copytree(assets.model, tmp_path / "no_weights")
    (folder / "model.safetensors").unlink()
    return folder


@pytest.mark.parametrize("failure", ["model without weights", "bad lora targets", "max-length too long"])
def test_a_failed_start_leaves_the_run_byte_identical_and_resumable(assets, cli, finished_run, tmp_path, failure):
    """The failed start would have overwritten config.json, after which --resume of the old run failed."""
    extra = {"model without weights": ["--model", _without_weights(assets, tmp_path)],
             "bad lora targets": ["--method", "lora", "--lora-targets", "nothing"],
             "max-length too long": ["--max-length", "100"]}[failure]
    before = fingerprint(finished_run)
    status, err = cli([*assets.args(finished_run, "--overwrite"), *extra])
    assert status == 2 and "Traceback" not in err
    assert fingerprint(finished_run) == before
    assert cli(["--resume", finished_run])[0] == 0  # the old run is still whole


def test_two_runs_started_in_the_same_second_get_two_folders(assets, cli, tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 2, 4, 30, 0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runfolder, "datetime", Frozen)
    assert cli(assets.args(None, "--max-steps", "1"))[0] == 0
    assert cli(assets.args(None, "--max-steps", "1"))[0] == 0
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(folders) == 2 and folders[1] == folders[0] + "-2" and folders[0].endswith("-full-20261202-043000")
    for name in folders:
        assert json.loads((tmp_path / "runs" / name / "summary.json").read_text())["output_dir"] == f"runs/{name}"


def test_a_failed_start_removes_the_default_folder_it_made(assets, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err = cli([*assets.args(None), "--model", _without_weights(assets, tmp_path)])
    assert status == 2 and "no_weights" in err
    assert list((tmp_path / "runs").iterdir()) == []


def test_an_output_dir_that_is_a_file_or_cannot_be_created(assets, cli, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    status, err = cli(assets.args(blocker))
    assert status == 2 and f"--output-dir {blocker} is a file, not a folder" in err and "Traceback" not in err
    status, err = cli(assets.args(blocker / "run"))
    assert status == 2 and f"--output-dir {blocker / 'run'} cannot be created: {blocker} is a file" in err
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_an_output_dir_without_write_permission(assets, cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        status, err = cli(assets.args(locked / "run"))
    finally:
        locked.chmod(0o700)
    assert status == 2 and "no permission to write in" in err


def test_a_folder_of_other_files_is_refused_unless_overwrite(assets, cli, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    status, err = cli(assets.args(folder, "--max-steps", "1"))
    assert status == 2 and f"--output-dir {folder} is not empty (it holds notes.txt)" in err
    assert cli(assets.args(folder, "--max-steps", "1", "--overwrite"))[0] == 0
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "summary.json").is_file()


def test_a_folder_in_use_by_another_run_is_refused(cli, finished_run):
    fcntl = pytest.importorskip("fcntl")
    before = fingerprint(finished_run)
    fd = os.open(finished_run, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the other run's process holds it
        status, err = cli(["--resume", finished_run])
    finally:
        os.close(fd)
    assert status == 2 and f"{finished_run} is in use by another minift run" in err
    assert fingerprint(finished_run) == before
