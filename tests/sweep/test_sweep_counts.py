"""The reports' parameter counts from the commands' summaries (``trainable_params``), with ``--dry-run`` on models
built by ``--init random`` from presets: the CoLA/STS-B report's RoBERTa-base (full, BitFit, LoRA r = 2 / 8 / 64 /
256 on query+value with the head frozen) through one ``python -m minift.sweep`` command, and the NER report's
RoBERTa-large LoRA r=16 with every bias trained (token classification, 11 tags) through ``python -m minift.train``.

The numbers are the reports'; ``test_the_reports_counts_are_peft_counts`` recomputes them with transformers and
peft (models built on the meta device) so they are checked against the reference, not only typed in."""
import json

import pytest

ROBERTA_BASE = {"method=full": 124_647_170, "method=bitfit": 102_914, "method=lora__lora.r=2": 73_728,
                "method=lora__lora.r=8": 294_912, "method=lora__lora.r=64": 2_359_296,
                "method=lora__lora.r=256": 9_437_184}
NER_ROBERTA_LARGE = 1_855_499


def test_roberta_base_counts_from_one_sweep_command(shared_data, tmp_path, capsys):
    from minift.sweep.__main__ import main

    out = tmp_path / "counts"
    code = main(["--grid", "method=full,bitfit,lora lora_r=2,8,64,256", "--task", "cola", "--data-dir",
                 str(shared_data), "--model", "roberta-base", "--init", "random", "--train-head", "false",
                 "--lora-targets", "query,value", "--dry-run", "--output-dir", str(out)])
    assert code == 0
    counts = {c["name"]: c["trainable_params"] for c in json.loads((out / "cells.json").read_text())}
    assert counts == ROBERTA_BASE
    for name, count in counts.items():
        assert json.loads((out / name / "summary.json").read_text())["trainable_params"] == count
    printed = capsys.readouterr().out  # the methods as rows, each LoRA rank its own row, the parameters beside
    for row in ("| full | 124,647,170 | 100.00 |", "| bitfit | 102,914 | 0.0826 |", "| lora r=2 | 73,728 | 0.0591 |",
                "| lora r=256 | 9,437,184 | 7.04 |"):
        assert row in printed


def test_ner_roberta_large_lora_bias_all(shared_data, tmp_path):
    from minift.train.__main__ import main

    out = tmp_path / "ner"
    code = main(["--task", "bionlp2004", "--data-dir", str(shared_data), "--model", "roberta-large", "--init",
                 "random", "--method", "lora", "--lora-r", "16", "--lora-bias", "all", "--dry-run", "--output-dir",
                 str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_params"] == NER_ROBERTA_LARGE and summary["stopped"] == "dry_run"


def test_the_reports_counts_are_peft_counts():
    """The reference: transformers' RoBERTa with peft's LoRA (and the biases BitFit trains), on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from minift.models.presets import PRESETS

    def config(name, labels):
        return transformers.RobertaConfig(**{k: v for k, v in PRESETS[name].items() if k != "model_type"},
                                          num_labels=labels)

    with torch.device("meta"):
        base = transformers.RobertaForSequenceClassification(config("roberta-base", 2))
        assert sum(p.numel() for p in base.parameters()) == ROBERTA_BASE["method=full"]
        biases = [p.numel() for n, p in base.named_parameters() if n.endswith(".bias")]
        assert sum(biases) == ROBERTA_BASE["method=bitfit"]  # every bias, the head's included (its weights frozen)
        for r in (2, 8, 64, 256):
            model = transformers.RobertaForSequenceClassification(config("roberta-base", 2))
            lora = peft.get_peft_model(model, peft.LoraConfig(r=r, target_modules=["query", "value"]))
            assert lora.get_nb_trainable_parameters()[0] == ROBERTA_BASE[f"method=lora__lora.r={r}"]
        large = transformers.RobertaForTokenClassification(config("roberta-large", 11))
        ner = peft.get_peft_model(large, peft.LoraConfig(task_type="TOKEN_CLS", r=16, target_modules=["query", "value"],
                                                         bias="all"))
        assert ner.get_nb_trainable_parameters()[0] == NER_ROBERTA_LARGE
