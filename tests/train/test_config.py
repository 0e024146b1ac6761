"""TrainConfig: defaults, YAML files, command-line overrides, and the errors for unknown keys and wrong types."""
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
    ({"device": "tpu"}, "device"), ({"clip": -1.0}, "clip")])
def test_invalid_values(kwargs, fragment):
    with pytest.raises(TrainConfigError, match=fragment):
        TrainConfig(**kwargs)
