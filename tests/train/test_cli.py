"""``python -m minift.train`` end to end on a tiny BERT and a tiny CSV task: bad input, Ctrl-C and exact resume,
``--seeds`` tables, and a 2-process torchrun (gloo) run against one process with the same global batch."""
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from kit import cli_assets
from safetensors.torch import load_file

from minift.train.__main__ import main
from minift.train.build import build_task
from minift.train.checkpoint import find_checkpoint
from minift.train.flags import resolve_config

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def common(model, task, out, *extra):
    return ["--task", task, "--model", str(model), "--method", "full", "--batch-size", "8", "--max-length", "32",
            "--lr", "1e-3", "--output-dir", str(out), "--plot", "false", *extra]


def test_unknown_task_is_a_clear_error(tmp_path, capsys):
    model, _ = cli_assets(tmp_path)
    assert main(common(model, "no_such_task", tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "no_such_task" in err and "agnews" in err  # names the task and lists the known ones


def test_unknown_method_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--task", "agnews", "--method", "qlora"])
    assert exit_info.value.code == 2 and "qlora" in capsys.readouterr().err


def test_not_a_model_folder(tmp_path, capsys):
    _, task = cli_assets(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(common(tmp_path / "empty", task, tmp_path / "run")) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert main(common(tmp_path / "missing", task, tmp_path / "run")) == 2
    assert "does not exist" in capsys.readouterr().err


def _spawn(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "minift.train", *args], env=ENV, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _final_weights(run: Path) -> dict:
    return load_file(find_checkpoint(run) / "trainable.safetensors")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_resume_is_bit_identical(tmp_path):
    model, task = cli_assets(tmp_path)
    args = ["--epochs", "3"]
    interrupted = _spawn(common(model, task, tmp_path / "a", *args))
    log = tmp_path / "a" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (log.exists() and '"eval"' in log.read_text()):
        time.sleep(0.2)
    interrupted.send_signal(signal.SIGINT)  # right after the first evaluation (end of epoch 1)
    output = interrupted.communicate(timeout=600)[0]
    assert interrupted.returncode == 130, output
    assert "--resume" in output
    stopped_at = json.loads((find_checkpoint(tmp_path / "a") / "state.json").read_text())["loop"]
    assert stopped_at["stopped"] == "" and 12 <= stopped_at["step"] < 36  # 12 steps per epoch, 3 epochs

    resumed = _spawn(["--resume", str(tmp_path / "a"), *common(model, task, tmp_path / "a", *args)])
    assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
    straight = _spawn(common(model, task, tmp_path / "b", *args))
    assert straight.wait(timeout=600) == 0, straight.stdout.read()

    a, b = _final_weights(tmp_path / "a"), _final_weights(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    summary_a = json.loads((tmp_path / "a" / "summary.json").read_text())
    summary_b = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary_a["test"] == summary_b["test"] and summary_a["steps"] == summary_b["steps"] == 36


@pytest.mark.slow
def test_seeds_write_mean_and_std_tables(tmp_path):
    model, task = cli_assets(tmp_path)
    assert main(common(model, task, tmp_path / "seeds", "--seeds", "3,4", "--epochs", "1")) == 0
    summaries = [json.loads((tmp_path / "seeds" / f"seed-{s}" / "summary.json").read_text()) for s in (3, 4)]
    assert [s["seed"] for s in summaries] == [3, 4]
    rows = (tmp_path / "seeds" / "results.csv").read_text().splitlines()
    header, mean_row = rows[0].split(","), rows[-1].split(",")
    assert header[:4] == ["seed", "accuracy", "micro_f1", "macro_f1"]
    for i, name in enumerate(header[1:4], start=1):
        values = [s["test"][name] for s in summaries]
        assert float(mean_row[i]) == pytest.approx(statistics.fmean(values))
        assert float(mean_row[i + len(header) // 2]) == pytest.approx(statistics.stdev(values))
    markdown = (tmp_path / "seeds" / "results.md").read_text()
    assert "mean ± std" in markdown and "| seed | accuracy |" in markdown


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path):
    """2 processes × batch 4 (gloo) and 1 process × batch 8: same global batches, same final metrics. Without
    --output-dir, the two processes agree on one new runs/<task>-<method>-<timestamp> folder."""
    model, task = cli_assets(tmp_path, dropout=0.0)
    base = common(model, task, tmp_path / "unused", "--epochs", "2", "--device", "cpu")
    base[base.index("--batch-size") + 1] = "4"
    del base[base.index("--output-dir"):base.index("--output-dir") + 2]
    work = tmp_path / "work"
    work.mkdir()
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "minift.train", *base], env=ENV, cwd=work, capture_output=True, text=True,
                         timeout=900, check=False)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    folders = list((work / "runs").iterdir())
    assert len(folders) == 1, folders
    (tmp_path / "ddp").symlink_to(folders[0].resolve())
    assert main(common(model, task, tmp_path / "single", "--epochs", "2", "--device", "cpu")) == 0
    two = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    one = json.loads((tmp_path / "single" / "summary.json").read_text())
    assert two["steps"] == one["steps"] == 24
    assert two["test"] == one["test"]
    a, b = _final_weights(tmp_path / "ddp"), _final_weights(tmp_path / "single")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=0, msg=name)


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_resume_alone_continues_the_run_with_its_own_config(tmp_path, capsys):
    """``--resume RUN_DIR`` with no other flag: the run's batch size (not the default 32), no extra step after
    ``--max-steps``, the saved config kept; raising the limit trains on; a different batch size is refused."""
    model, task = cli_assets(tmp_path, n_train=32, n_test=8)
    run = tmp_path / "run"
    assert main(common(model, task, run, "--batch-size", "4", "--max-steps", "3")) == 0
    saved = (run / "config.json").read_text()
    assert _summary(run)["steps"] == 3 and _summary(run)["stopped"] == "max_steps"

    assert main(["--resume", str(run)]) == 0
    assert _summary(run)["steps"] == 3 and _summary(run)["stopped"] == "max_steps"
    assert (run / "config.json").read_text() == saved

    assert main(["--resume", str(run), "--max-steps", "5"]) == 0
    assert _summary(run)["steps"] == 5 and json.loads((run / "config.json").read_text())["max_steps"] == 5
    capsys.readouterr()
    assert main(["--resume", str(run), "--batch-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 4 → 8" in err and "Traceback" not in err


def test_file_task_columns_and_kind(tmp_path):
    """--text-column / --text-pair-column / --label-column / --task-kind reach the file: reader: labels 0.5 / 1.5
    would be read as a regression target; --task-kind classification makes them two classes."""
    model, _ = cli_assets(tmp_path, n_train=8, n_test=8)
    for split in ("train", "dev", "test"):
        rows = ["premise,hypothesis,gold,other"] + [f"w{i} w7,w{i + 1},{0.5 + i % 2},x" for i in range(8)]
        (tmp_path / f"pairs_{split}.csv").write_text("\n".join(rows) + "\n")
    task = "file:" + ",".join(str(tmp_path / f"pairs_{s}.csv") for s in ("train", "dev", "test"))
    args = common(model, task, tmp_path / "run", "--max-steps", "1", "--text-column", "premise",
                  "--text-pair-column", "hypothesis", "--label-column", "gold", "--task-kind", "classification")
    assert main(args) == 0
    summary = _summary(tmp_path / "run")
    assert summary["main_metric"] == "accuracy" and summary["test_examples"] == 8
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["text_column"], saved["text_pair_column"], saved["label_column"], saved["task_kind"]) == (
        "premise", "hypothesis", "gold", "classification")
    first = build_task(resolve_config(args)).splits["train"][0]
    assert (first.text, first.text_pair, first.label) == ("w0 w7", "w1", 0)


@pytest.mark.parametrize("extra, message", [
    (["--method", "lora", "--lora-targets", "foo"], "'foo' matches no module"),
    (["--method", "prompt", "--prompt-init", "foo"], "unknown prompt init 'foo'"),
    (["--method", "prompt", "--prompt-init", "text"], "needs the text (--prompt-text"),
    (["--method", "adapter", "--adapter-size", "0"], "adapter size must be a positive integer"),
    (["--method", "lora", "--precision", "bf16-pure", "--lora-dropout", "1.5"], "LoRA dropout")])
def test_bad_peft_options_are_one_line_errors(tmp_path, capsys, extra, message):
    model, task = cli_assets(tmp_path)
    assert main(common(model, task, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
