"""TrainConfig: defaults, YAML files, command-line overrides, the method configs carried whole (flags generated from
minift.peft.config, earlier flat keys read as aliases), and the errors for unknown keys and wrong types."""
import dataclasses
import json

import pytest

from minift.peft.config import AdapterConfig, LoRAConfig, Method, PromptConfig
from minift.train.config import DEFAULT_LR, TrainConfig, TrainConfigError
from minift.train.flags import build_parser, load_yaml, resolve_config, task_yaml


def test_cli_overrides_yaml_and_types_are_parsed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: sst2\nepochs: 2\nbatch_size: 16\nlora:\n  targets: [query, value]\n  r: 16\n")
    config = resolve_config(["--config", str(path), "--batch-size", "8", "--lr", "2e-4", "--seeds", "42,20,13",
                             "--precision", "bf16", "--warmup", "100", "--group-by-length", "false",
                             "--lora-alpha", "8", "--gradient-checkpointing"])
    assert (config.task, config.epochs, config.batch_size) == ("sst2", 2, 8)
    assert config.lr == 2e-4 and config.seeds == [42, 20, 13] and config.precision == "bf16"
    assert config.lora == LoRAConfig(r=16, alpha=8.0, targets=["query", "value"])  # YAML and flag options merge
    assert config.warmup == 100.0 and config.group_by_length is False and config.gradient_checkpointing is True


def test_method_spec_carries_the_method_config_whole():
    config = TrainConfig(method="adapter", adapter=AdapterConfig(reduction_factor=16, activation="gelu"),
                         train_head=False)
    assert config.method_spec == Method("adapter", AdapterConfig(reduction_factor=16, activation="gelu"), False)
    assert TrainConfig(method="bitfit").method_spec == Method("bitfit")
    assert TrainConfig(method="full").method_spec == Method("full")
    prompt = resolve_config(["--task", "sst2", "--method", "prompt", "--prompt-init", "text", "--prompt-text",
                             "classify the topic", "--prompt-length", "8"])
    assert prompt.method_spec.config == PromptConfig(length=8, init="text", text="classify the topic")
    assert prompt.to_dict()["prompt"] == {"length": 8, "init": "text", "text": "classify the topic", "token_ids": None}


def test_every_method_option_is_a_flag_with_its_comment_as_help():
    """The flags come from the peft dataclasses: a new option there is a new flag here, documented once."""
    actions = {a.dest: a for a in build_parser()._actions}
    for section, cls in (("lora", LoRAConfig), ("adapter", AdapterConfig), ("prompt", PromptConfig)):
        for f in dataclasses.fields(cls):
            if (section, f.name) == ("prompt", "token_ids"):  # computed from --prompt-text at build time
                continue
            action = actions[f"{section}.{f.name}"]
            assert action.option_strings == ["--" + f"{section}-{f.name}".replace("_", "-")]
            assert action.help.startswith(f"{section}: ") and len(action.help) > len(section) + 20
    for flat in ("lora_r", "adapter_size", "prompt_length", "prompt_init"):
        assert flat not in actions  # one config per method: no flat copies


def test_earlier_flat_keys_are_read_as_aliases(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("method: prompt\nlora_r: 4\nadapter_size: 16\nprompt_length: 5\nprompt_init: 'text:hello'\n")
    config = resolve_config(["--config", str(path)])
    assert config.lora.r == 4 and config.adapter.size == 16
    assert config.prompt == PromptConfig(length=5, init="text", text="hello")


def test_precision_aliases():
    assert resolve_config(["--task", "sst2", "--precision", "mixed-bf16"]).precision == "bf16"
    assert TrainConfig(precision="mixed-fp16").precision == "fp16"


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
    ({"device": "tpu"}, "device"), ({"clip": -1.0}, "clip"), ({"precision": "fp8"}, "precision"),
    ({"text_column": "sentence"}, "--text-column"),
    ({"task_kind": "regression"}, "only for file: tasks"), ({"seeds": [1, 2], "resume": "runs/a"}, "--resume"),
    # the method options are checked by their own dataclass (minift.peft.config), once
    ({"lora": {"r": 0}}, "lora options: LoRA r must be a positive integer"),
    ({"lora": {"dropout": 1.0}}, "LoRA dropout"), ({"lora": {"rank": 4}}, "unknown lora option"),
    ({"prompt": {"init": "foo"}}, "unknown prompt init 'foo'"), ({"prompt": {"init": "text:"}}, "needs the text"),
    ({"prompt": {"text": "hi"}}, "only make sense with init 'text'"), ({"lora": 8}, "lora must be a mapping"),
    ({"adapter": {"size": 8, "reduction_factor": 16}}, "not both"), ({"adapter": {"placement": "x"}}, "placement")])
def test_invalid_values(kwargs, fragment):
    with pytest.raises(TrainConfigError, match=fragment):
        TrainConfig(**kwargs)


def test_prompt_init_accepts_the_documented_forms():
    assert TrainConfig(prompt={"init": "random"}).prompt.init == "random"
    assert TrainConfig(prompt={"init": "text", "text": "the topic"}).prompt.text == "the topic"
    assert TrainConfig(prompt={"init": "text:classify the topic"}).prompt == PromptConfig(init="text",
                                                                                          text="classify the topic")


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
    free = ["--clip", "0.5", "--device", "cpu", "--save-every-steps", "3", "--save-every-minutes", "1", "--log-every",
            "2", "--early-stopping", "2", "--eval-batch-size", "8", "--eval-each-epoch", "false", "--plot", "false",
            "--gradient-checkpointing", "--max-length", "64"]  # --max-length: checked against the data at set-up
    config = resolve_config(["--resume", str(run), *free])
    assert (config.clip, config.save_every_steps, config.max_length, config.overwrite) == (0.5, 3, 64, False)


@pytest.mark.parametrize("argv, fragment", [
    (["--seed", "1"], "--seed"), (["--grad-accum", "2"], "grad-accum"),
    (["--method", "full"], "--method"), (["--val-fraction", "0.2"], "--val-fraction"), (["--lr", "0.5"], "--lr"),
    (["--lora-r", "4"], "--lora-r 8 → 4"), (["--lora-targets", "query"], "--lora-targets None"),
    (["--max-steps", "5"], "may only be raised"), (["--epochs", "1"], "may only be raised")])
def test_resume_refuses_flags_that_change_the_run(tmp_path, argv, fragment):
    run = saved_run(tmp_path)
    with pytest.raises(TrainConfigError, match=fragment):
        resolve_config(["--resume", str(run), *argv])


def test_resume_compares_only_the_runs_own_method_options(tmp_path):
    run = saved_run(tmp_path)  # a LoRA run: the adapter's options do not matter to it
    assert resolve_config(["--resume", str(run), "--adapter-size", "8"]).adapter.size == 8


def test_resume_reads_a_run_folder_of_an_earlier_release(tmp_path):
    """config.json with the flat keys lora_r, ..., prompt_init and train_head: true (then the default)."""
    run = saved_run(tmp_path)
    old = {k: v for k, v in json.loads((run / "config.json").read_text()).items()
           if k not in ("lora", "adapter", "prompt", "train_head")}
    old.update({"lora_r": 8, "lora_alpha": 16.0, "lora_dropout": 0.05, "lora_targets": None,
                "adapter_size": 64, "adapter_placement": "houlsby", "prompt_length": 20, "prompt_init": "vocab",
                "train_head": True})
    (run / "config.json").write_text(json.dumps(old))
    config = resolve_config(["--resume", str(run), "--max-steps", "20"])
    assert config.lora == LoRAConfig() and config.adapter.size == 64 and config.train_head is None
    with pytest.raises(TrainConfigError, match="--lora-r 8 → 4"):
        resolve_config(["--resume", str(run), "--lora-r", "4"])


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(TrainConfigError, match="config.json is missing"):
        resolve_config(["--resume", str(tmp_path)])
