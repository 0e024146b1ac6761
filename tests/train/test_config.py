"""TrainConfig: defaults, YAML files, command-line overrides, and the errors for unknown keys and wrong types."""
import json

import pytest

from minift.train.config import DEFAULT_LR, TrainConfig, TrainConfigError, load_yaml, resolve_config, task_yaml


def test_cli_overrides_yaml_and_types_are_parsed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: sst2\nepochs: 2\nbatch_size: 16\nlora_targets: [query, value]\n")
    config = resolve_config(["--config", str(path), "--batch-size", "8", "--lr", "2e-4", "--seeds", "42,20,13",
                             "--precision", "bf16", "--warmup", "100", "--group-by-length", "false"])
    assert (config.task, config.epochs, config.batch_size) == ("sst2", 2, 8)
    assert config.lr == 2e-4 and config.seeds == [42, 20, 13] and config.precision == "bf16"
    assert config.lora_targets == ["query", "value"] and config.warmup == 100.0 and config.group_by_length is False


def test_task_yaml_is_found_and_applied():
    assert task_yaml("agnews").name == "agnews.yaml"
    assert task_yaml("agnews_sup").name == "agnews.yaml"  # aliases find the canonical file
    assert resolve_config(["--task", "agnews"]).epochs == 1
    assert resolve_config(["--task", "agnews", "--epochs", "4"]).epochs == 4


@pytest.mark.parametrize("method", ["full", "lora", "adapter", "bitfit", "prompt"])
def test_method_default_learning_rates(method):
    config = TrainConfig(method=method)
    assert config.learning_rate == DEFAULT_LR[method]
    assert TrainConfig(method=method, lr=0.123).learning_rate == 0.123


@pytest.mark.parametrize("argv", [["--no-such-flag", "1"], ["--epochs", "two"], ["--lr", "fast"],
                                  ["--method", "qlora"], ["--precision", "fp8"], ["--seeds", "1,x"],
                                  ["--group-by-length", "maybe"]])
def test_bad_flags_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as err:
        resolve_config(argv)
    assert err.value.code == 2
    assert "error" in capsys.readouterr().err


def test_unknown_yaml_key_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(TrainConfigError, match="learning_rate"):
        load_yaml(path)


@pytest.mark.parametrize("yaml_text, fragment", [("epochs: 2.5\n", "epochs must be int"),
                                                 ("lr: '1e-3'\n", "lr must be float"),
                                                 ("group_by_length: 1\n", "group_by_length must be bool"),
                                                 ("betas: 0.9\n", "betas must be a list"),
                                                 ("- 1\n- 2\n", "mapping")])
def test_wrong_yaml_types(tmp_path, yaml_text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(TrainConfigError, match=fragment):
        resolve_config(["--config", str(path)])


@pytest.mark.parametrize("kwargs, fragment", [
    ({"batch_size": 0}, "batch_size"), ({"grad_accum": 0}, "grad_accum"), ({"warmup": 2.5}, "warmup"),
    ({"lr": -1.0}, "lr"), ({"betas": [0.9]}, "betas"), ({"val_fraction": 1.0}, "val_fraction"),
    ({"method": "dora"}, "method"), ({"schedule": "step"}, "schedule"), ({"seeds": []}, "seeds"),
    ({"device": "tpu"}, "device"), ({"clip": -1.0}, "clip"), ({"prompt_init": "foo"}, "prompt_init"),
    ({"prompt_init": "text:"}, "prompt_init"), ({"prompt_init": "text:  "}, "prompt_init"),
    ({"task": "file:x.csv", "task_kind": "ner"}, "task_kind"), ({"text_column": "sentence"}, "--text-column"),
    ({"task_kind": "regression"}, "only for file: tasks"), ({"seeds": [1, 2], "resume": "runs/a"}, "--resume")])
def test_invalid_values(kwargs, fragment):
    with pytest.raises(TrainConfigError, match=fragment):
        TrainConfig(**kwargs)


def test_prompt_init_accepts_the_documented_forms():
    for value in ("random", "vocab", "text:classify the topic"):
        assert TrainConfig(prompt_init=value).prompt_init == value


def saved_run(tmp_path, **values):
    """A run folder holding the resolved config.json a run writes."""
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(task="file:data.csv", model=str(tmp_path / "model"), batch_size=4, epochs=2, max_steps=10,
                         output_dir=str(run), **values)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    return run


def test_resume_alone_continues_with_the_saved_config(tmp_path):
    run = saved_run(tmp_path, text_column="sentence")
    config = resolve_config(["--resume", str(run)])
    assert (config.task, config.batch_size, config.epochs, config.text_column) == ("file:data.csv", 4, 2, "sentence")
    assert config.model == str(tmp_path / "model") and config.output_dir == str(run) and config.resume == str(run)
    assert resolve_config(["--resume", str(run / "checkpoints" / "step-3")]).batch_size == 4


def test_resume_may_raise_limits_and_change_evaluation(tmp_path):
    run = saved_run(tmp_path)
    config = resolve_config(["--resume", str(run), "--max-steps", "20", "--epochs", "3", "--eval-every", "5",
                             "--batch-size", "4", "--model", str(tmp_path / "x" / ".." / "model")])
    assert (config.max_steps, config.epochs, config.eval_every) == (20, 3, 5)
    assert resolve_config(["--resume", str(run), "--max-steps", "0"]).max_steps == 0  # 0: no limit, a raise


@pytest.mark.parametrize("argv, fragment", [
    (["--batch-size", "32"], "--batch-size 4 → 32"), (["--seed", "1"], "--seed"), (["--grad-accum", "2"], "grad-accum"),
    (["--method", "full"], "--method"), (["--max-length", "64"], "--max-length"), (["--lr", "0.5"], "--lr"),
    (["--max-steps", "5"], "may only be raised"), (["--epochs", "1"], "may only be raised")])
def test_resume_refuses_flags_that_change_the_run(tmp_path, argv, fragment):
    run = saved_run(tmp_path)
    with pytest.raises(TrainConfigError, match=fragment):
        resolve_config(["--resume", str(run), *argv])


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(TrainConfigError, match="config.json is missing"):
        resolve_config(["--resume", str(tmp_path)])
