"""Everything that can be checked before training is (issue 14): --max-length against the model's positions and what
the task needs, the device, the model and tokenizer files, the data (through the command); relative paths work
from another folder; a NaN stop says what is likely; --debug shows the traceback."""
import json
import shutil

import pytest
import torch
from badkit import fingerprint
from safetensors.torch import load_file, save_file

from minift.data.example import Example, Task
from minift.train import recipe
from minift.train.build import TrainSetupError, check_max_length
from minift.train.checkpoint import find_checkpoint
from minift.train.config import TrainConfig


def test_max_length_beyond_the_positions_is_refused_before_training(assets, cli, tmp_path):
    """The tiny BERT has 64 positions; a long test row used to crash the final test, after the training."""
    long_test = tmp_path / "test.csv"
    long_test.write_text("text,label\n" + " ".join(["w7"] * 200) + ",1\nw1 w2,0\n")
    task = assets.task.rsplit(",", 1)[0] + f",{long_test}"
    status, err = cli([*assets.args(tmp_path / "run", "--max-length", "100"), "--task", task])
    assert status == 2 and "--max-length 100 is too long for this bert model" in err and "Traceback" not in err
    assert "use --max-length 64 or less" in err and not (tmp_path / "run").exists()


def test_a_soft_prompt_counts_against_the_positions(assets, cli, tmp_path):
    status, err = cli(assets.args(tmp_path / "run", "--method", "prompt", "--prompt-length", "8", "--max-length",
                                  "60"))
    assert status == 2 and "the soft prompt adds 8 virtual tokens" in err and "use --max-length 56 or less" in err


def test_robertas_position_offset_counts(tiny):
    """RoBERTa's positions start after the padding id: 66 position rows hold 64 tokens."""
    model = tiny("roberta", "classification", num_labels=2).load()
    task = Task("t", "classification", {"train": [Example("a", 0)], "test": [Example("b", 1)]}, ["0", "1"],
                ["accuracy"], "accuracy")
    check_max_length(TrainConfig(method="full", max_length=64), task, model, None)
    with pytest.raises(TrainSetupError, match="--max-length 65 is too long .* use --max-length 64 or less"):
        check_max_length(TrainConfig(method="full", max_length=65, model="m"), task, model, None)


def test_max_length_too_short_for_the_special_tokens(assets, cli, tmp_path):
    status, err = cli(assets.args(tmp_path / "run", "--max-length", "1"))
    assert status == 2 and "--max-length 1 is too short for task" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_resume_may_fix_a_max_length_only_evaluation_would_have_hit(assets, cli, finished_run):
    """A run saved (by an earlier release) with --max-length 100 > 64 positions: --resume alone is refused before
    anything is written, a --max-length that truncates training examples is refused, one that leaves them as they
    were is taken."""
    config = json.loads((finished_run / "config.json").read_text())
    (finished_run / "config.json").write_text(json.dumps({**config, "max_length": 100}))
    before = fingerprint(finished_run)
    status, err = cli(["--resume", finished_run])
    assert status == 2 and "--max-length 100 is too long" in err and fingerprint(finished_run) == before
    status, err = cli(["--resume", finished_run, "--max-length", "6"])
    assert status == 2 and "--max-length 100 → 6 would change" in err and fingerprint(finished_run) == before
    assert cli(["--resume", finished_run, "--max-length", "40"])[0] == 0
    assert json.loads((finished_run / "config.json").read_text())["max_length"] == 40


def test_a_device_that_is_not_there(assets, cli, tmp_path):
    status, err = cli(assets.args(tmp_path / "run", "--device", "cuda:99"))
    assert status == 2 and "--device cuda:99" in err and "Traceback" not in err
    if not torch.cuda.is_available():
        status, err = cli(assets.args(tmp_path / "run", "--device", "cuda"))
        assert status == 2 and "--device cuda: CUDA is not available here" in err
    assert not (tmp_path / "run").exists()


def test_relative_paths_are_saved_absolute_and_resume_works_elsewhere(assets, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(assets.root)
    run = tmp_path / "run"
    status, _ = cli([*assets.args(run, "--max-steps", "2"), "--task", "file:train.csv,dev.csv,test.csv",
                     "--model", "model"])
    assert status == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["task"] == f"file:{assets.root / 'train.csv'},{assets.root / 'dev.csv'},{assets.root / 'test.csv'}"
    assert saved["model"] == str(assets.model)
    monkeypatch.chdir(tmp_path)
    assert cli(["--resume", run, "--max-steps", "3"])[0] == 0


def test_a_comma_in_a_file_path_is_one_file(assets, cli, tmp_path):
    data = tmp_path / "reviews, 2024.csv"
    shutil.copy(assets.root / "train.csv", data)
    status, _ = cli([*assets.args(tmp_path / "run", "--max-steps", "1"), "--task", f"file:{data}"])
    assert status == 0 and json.loads((tmp_path / "run" / "summary.json").read_text())["test_examples"] > 0


ROWS = "".join(f"w{i} w{i + 1},{i % 2}\n" for i in range(20))
DATA = {  # file content → what the message must say
    "tsv saved as csv": ("text\tlabel\n" + ROWS.replace(",", "\t"), "tab-separated, not comma-separated"),
    "json lines saved as csv": ('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n', "JSON lines, not CSV"),
    "no header": (ROWS, "is not a header"),
    "an empty label": ("text,label\n" + ROWS + "w3 w4,\n", "empty label in column 'label'"),
    "numbers with a typo": ("text,label\n" + "".join(f"t{i},{i * 0.37:.2f}\n" for i in range(30)) + "oops,n/a\n",
                            "--task-kind regression"),
    "a single class": ("text,label\n" + "".join(f"w{i},pos\n" for i in range(20)), "every training row has the"),
}


@pytest.mark.parametrize("case", list(DATA))
def test_bad_data_files_are_one_message_through_the_command(assets, cli, tmp_path, case):
    content, message = DATA[case]
    data = tmp_path / "data.csv"
    data.write_text(content)
    status, err = cli([*assets.args(tmp_path / "run"), "--task", f"file:{data}"])
    assert status == 2 and message in err and data.name in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _model_copy(assets, tmp_path):
    return shutil.copytree(assets.model, tmp_path / "model")


@pytest.mark.parametrize("case", ["corrupt tokenizer.json", "weights file as --model", "pickle file as --model",
                                  "folder without weights", "NaN in the weights"])
def test_bad_model_files_are_one_message(assets, cli, tmp_path, case):
    model = _model_copy(assets, tmp_path)
    if case == "corrupt tokenizer.json":
        (model / "tokenizer.json").write_text('{"version": "1.0", "model": ')
        given, message = model, "tokenizer.json cannot be read"
    elif case == "weights file as --model":
        given, message = model / "model.safetensors", "is a file, not a model folder"
    elif case == "pickle file as --model":
        given, message = model / "pytorch_model.bin", "is a file, not a model folder"
        given.write_bytes(b"\x80\x04K\x01.")
    elif case == "folder without weights":
        (model / "model.safetensors").unlink()
        given, message = model, str(model)
    else:
        weights = load_file(model / "model.safetensors")
        name = next(k for k in weights if k.endswith("word_embeddings.weight"))
        weights[name][3, 5] = float("nan")
        save_file(weights, model / "model.safetensors")
        given, message = model, "1 weight tensor(s) hold NaN or inf values (bert.embeddings.word_embeddings.weight)"
    status, err = cli([*assets.args(tmp_path / "run"), "--model", given])
    assert status == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_nan_already_at_step_1_does_not_blame_the_learning_rate(assets, cli, tmp_path):
    """Finite weights too large for the model's activations: the first forward pass overflows."""
    model = _model_copy(assets, tmp_path)
    weights = load_file(model / "model.safetensors")
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[name] = weights[name] * 1e30
    save_file(weights, model / "model.safetensors")
    run = tmp_path / "run"
    status, err = cli([*assets.args(run), "--model", model])
    message = err.split("stopped:")[1]
    assert status == 1 and "NaN/inf at step 1, in the first forward pass before any update, so --lr is not" in message
    assert "lower --lr" not in message and "no checkpoint had been written before it" in message
    assert "checkpoints" not in message and "best" not in message  # no file that does not exist is pointed to


def test_nan_after_some_steps_points_to_the_learning_rate_and_to_files_that_exist(assets, cli, tmp_path,
                                                                                  monkeypatch):
    real, calls = recipe.backward_window, [0]

    def from_step_3(*args, **kwargs):  # the loss turns NaN at step 3 (the updates diverged)
        calls[0] += 1
        summed = real(*args, **kwargs)
        return summed * float("nan") if calls[0] >= 3 else summed

    monkeypatch.setattr(recipe, "backward_window", from_step_3)
    run = tmp_path / "run"
    status, err = cli(assets.args(run, "--save-every-steps", "1", "--eval-every", "2"))
    assert status == 1 and "became NaN/inf between step 2 and step 3" in err and "a lower --lr (this run: 0.001)" in err
    checkpoint = find_checkpoint(run)
    assert checkpoint.name == "step-2" and f"the last good checkpoint is {checkpoint}" in err
    assert f"the best weights so far are in {run / 'best'}" in err and (run / "best").is_dir()
    assert json.loads((run / "summary.json").read_text())["stopped"] == "nan"


def test_debug_shows_the_traceback(assets, cli, tmp_path, monkeypatch):
    status, err = cli([*assets.args(tmp_path / "run", "--max-length", "1"), "--debug"])
    assert status == 2 and "Traceback" in err and "--max-length 1 is too short" in err
    monkeypatch.setenv("MINIFT_DEBUG", "1")
    status, err = cli(assets.args(tmp_path / "run", "--max-length", "1"))
    assert status == 2 and "Traceback" in err


@pytest.mark.parametrize("model", ["bert-base", "roberta-base", "gpt2", "default MiniLM"])
def test_the_memory_command_works_with_its_defaults(capsys, request, model):
    """The prompt-tuning row adds 20 tokens to 512 positions: shown as a row that cannot run, not exit 2."""
    from minift.memory.__main__ import main

    given = str(request.getfixturevalue("minilm_dir")) if model == "default MiniLM" else model
    assert main(["--model", given]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "full" in out and "lora r=8" in out
    if model != "gpt2":  # GPT-2 has 1024 positions
        assert "prompt n=20 cannot run 512-token sequences" in out


def test_the_memory_command_errors_and_debug(capsys, tmp_path):
    from minift.memory.__main__ import main

    assert main(["--model", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert "absent" in err and "Traceback" not in err
    assert main(["--model", str(tmp_path / "absent"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
