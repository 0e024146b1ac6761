"""``python -m minift.eval``: before tuning (a fresh encoder head is chance level, and says so), a run's weights
(LoRA and full fine-tuning) give the run's own test numbers, the summary has a training run's keys, a folder is
never overwritten, and the user's mistakes are one-line errors (exit 2)."""
from __future__ import annotations

import json
import shutil

import kit
import pytest
from cmdkit import llama_folder, summary, train_run

from minift.eval.__main__ import main
from minift.eval.trained import TrainedError

# the keys of a training run's summary.json that an evaluation's has too
CORE_KEYS = {"task", "method", "seed", "model", "main_metric", "validation", "best_validation", "best_step", "steps",
             "skipped_steps", "stopped", "train_examples", "test_examples", "trainable_params", "all_params",
             "output_dir", "test", "accuracy", "wall_time_s"}


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """(root, tiny BERT classifier folder, task): the kit's command-line assets."""
    root = tmp_path_factory.mktemp("bert")
    model, task = kit.cli_assets(root, n_train=48, n_test=24)
    return root, model, task


@pytest.fixture(scope="module")
def lora_run(bert):
    root, model, task = bert
    return train_run(root / "lora", task, model, "lora", "--epochs", "1")


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_untrained_encoder_head_is_chance_level(bert, tmp_path, monkeypatch, capsys):
    _, model, task = bert
    bare = kit.make_tiny(tmp_path, "bert", None, name="bare").folder  # no head: it is drawn fresh
    shutil.copy(model / "vocab.txt", bare / "vocab.txt")
    monkeypatch.chdir(tmp_path)
    args = ["--task", task, "--model", str(bare), "--max-length", "32"]
    assert main(args) == 0
    first = summary(next((tmp_path / "runs").iterdir()))
    assert "chance-level" in first["note"] and first["method"] == "base" and first["trainable_params"] == 0
    assert first["test_examples"] == 24 and first["accuracy"] == first["test"]["accuracy"]
    assert "chance-level" in capsys.readouterr().err
    assert main(args) == 0  # a second evaluation gets its own folder, the same numbers (the head is seeded)
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2 and summary(folders[1])["test"] == first["test"]


def test_run_weights_give_the_runs_test_numbers(bert, lora_run, tmp_path):
    _, model, task = bert
    run = summary(lora_run)
    assert main(["--adapter", str(lora_run), "--output-dir", str(tmp_path / "a")]) == 0  # the run's own settings
    evaluated = summary(tmp_path / "a")
    assert evaluated["test"] == run["test"] and evaluated["method"] == "lora" and evaluated["note"] is None
    assert evaluated["trainable_params"] == run["trainable_params"] and evaluated["all_params"] == run["all_params"]
    assert CORE_KEYS <= set(run) and CORE_KEYS <= set(evaluated)  # a training run's summary keys
    again = ["--adapter", str(lora_run / "best"), "--task", task, "--model", str(model), "--max-length", "48",
             "--output-dir", str(tmp_path / "b")]
    assert main(again) == 0 and summary(tmp_path / "b")["test"] == run["test"]
    settings = json.loads((tmp_path / "b" / "config.json").read_text())
    assert settings["adapter"] == str(lora_run / "best") and "lr" not in settings


def test_full_finetuning_best_folder(bert, tmp_path):
    root, model, task = bert
    run = train_run(tmp_path / "full", task, model, "full", "--max-steps", "3")
    assert main(["--adapter", str(run / "best"), "--output-dir", str(tmp_path / "e")]) == 0
    evaluated = summary(tmp_path / "e")
    assert evaluated["test"] == summary(run)["test"] and evaluated["method"] == "full"
    # the best/ folder on its own is the model (its tokenizer from --model's folder is not needed: BERT's vocab here)
    shutil.copy(model / "vocab.txt", run / "best" / "vocab.txt")
    alone = tmp_path / "alone"
    shutil.copytree(run / "best", alone)
    args = ["--adapter", str(alone), "--task", task, "--max-length", "48", "--output-dir", str(tmp_path / "f")]
    assert main(args) == 0
    assert summary(tmp_path / "f")["test"] == summary(run)["test"]


def test_output_folder_is_never_overwritten(lora_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "summary.json").write_text("{}")
    before = _files(taken)
    assert main(["--adapter", str(lora_run), "--output-dir", str(taken)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert _files(taken) == before


@pytest.mark.parametrize(("args", "message"), [
    (["--adapter", "no/such/run"], "is not a folder"),
    (["--model", "x"], "--task is required"),
])
def test_user_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_training_flags_are_not_evaluation_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--task", "sst2", "--lr", "1e-3"])
    assert "unrecognized arguments: --lr" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_model(bert, lora_run, tmp_path, capsys):
    _, _, task = bert
    other = kit.make_tiny(tmp_path, "roberta", "classification", name="other", num_labels=2).folder
    shutil.copy(bert[1] / "vocab.txt", other / "vocab.txt")
    args = ["--adapter", str(lora_run), "--model", str(other), "--output-dir", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # a failed evaluation leaves no folder behind
    with pytest.raises(TrainedError):  # --debug: the traceback, for a bug report
        main([*args, "--debug"])


def test_decoder_generates_its_labels_before_and_after(tmp_path, shared_data):
    model = llama_folder(tmp_path)
    common = ["--task", "financial_phrasebank_lm", "--data-dir", str(shared_data), "--max-length", "48"]
    assert main([*common, "--model", str(model), "--output-dir", str(tmp_path / "before")]) == 0
    before = summary(tmp_path / "before")
    assert before["note"] == "before tuning: the base model as loaded" and before["test_examples"] == 842
    run = train_run(tmp_path / "run", "financial_phrasebank_lm", model, "prompt", "--max-steps", "2",
                    "--data-dir", str(shared_data), "--prompt-length", "4", "--lr", "0.3")
    assert main(["--adapter", str(run), "--output-dir", str(tmp_path / "after")]) == 0
    assert summary(tmp_path / "after")["test"] == summary(run)["test"]



def test_instruction_tuned_run(tmp_path):
    """An SFT task (a file of conversations, the checkpoint's ChatML template): the held-out response loss before
    tuning, and a run's weights giving the run's own number."""
    rows = [{"prompt": f"repeat after me: {w} {v}", "response": f"{w} {v} {w} {v}"}
            for w, v in zip(kit.WORDS[:30], kit.WORDS[30:60])]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = llama_folder(tmp_path)
    common = ["--task", f"file:{data}", "--task-kind", "sft", "--max-length", "64"]
    assert main([*common, "--model", str(model), "--output-dir", str(tmp_path / "before")]) == 0
    before = summary(tmp_path / "before")
    assert before["main_metric"] == "response_loss" and before["response_loss"] > 0
    run = train_run(tmp_path / "sft", f"file:{data}", model, "lora", "--task-kind", "sft", "--max-steps", "4",
                    "--lr", "0.01", "--max-length", "64")
    assert main(["--adapter", str(run), "--output-dir", str(tmp_path / "after")]) == 0
    assert summary(tmp_path / "after")["test"] == summary(run)["test"]
