"""Every method trains through the command, and the exported best weights reproduce the reported test metrics
when loaded onto a fresh base model (minift.peft.load_trainable, or an HF folder for full fine-tuning)."""
import dataclasses
import json

import pytest
import torch
from kit import cli_assets

from minift.data.metrics import compute_metrics
from minift.data.tokenizer import load_tokenizer
from minift.models import load_pretrained
from minift.peft import load_trainable
from minift.peft.config import LoRAConfig
from minift.train.__main__ import main
from minift.train.batching import eval_batches
from minift.train.build import build_data, build_task
from minift.train.config import TrainConfig
from minift.train.evaluate import predict


@pytest.mark.parametrize("method, extra", [
    ("full", []), ("lora", ["--lora-r", "4", "--lora-targets", "query,value"]), ("adapter", ["--adapter-size", "8"]),
    ("bitfit", []), ("prompt", ["--prompt-length", "4"]),
    ("prompt", ["--prompt-length", "4", "--prompt-init", "text", "--prompt-text", "w7 w3"])])
def test_method_trains_and_best_weights_reload(tmp_path, method, extra):
    model_dir, task_spec = cli_assets(tmp_path)
    out = tmp_path / "run"
    args = ["--task", task_spec, "--model", str(model_dir), "--method", method, "--max-steps", "4",
            "--eval-every", "2", "--batch-size", "8", "--max-length", "32", "--output-dir", str(out),
            "--plot", "false", *extra]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["stopped"] == "max_steps"
    assert (summary["trainable_params"] == summary["all_params"]) == (method == "full")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "eval"] == [2, 4]
    saved = json.loads((out / "config.json").read_text())
    assert saved["method"] == method and set(saved["lora"]) == {f.name for f in dataclasses.fields(LoRAConfig)}

    config = TrainConfig(task=task_spec, model=str(model_dir), max_length=32)
    task = build_task(config)
    if method == "full":
        model = load_pretrained(out / "best", head="classification")
    else:
        model = load_trainable(load_pretrained(model_dir, head="classification", num_labels=2), out / "best")
    data = build_data(config, task, load_tokenizer(model_dir), model.config)
    predictions, labels = predict(model, eval_batches(data.test, data.collate, 16), "classification", "fp32",
                                  torch.device("cpu"))
    assert compute_metrics(task, predictions, labels) == pytest.approx(summary["test"])
