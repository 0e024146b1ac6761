"""The seed report's trainable-parameter table on a RoBERTa-base-shaped classifier (meta device: no memory),
and ``trainable_summary`` against peft's ``print_trainable_parameters``."""
import pytest
import torch

from minift.models.config import ModelConfig
from minift.models.load import build_model
from minift.models.registry import get_family
from minift.peft import apply, peft_modules, trainable_summary
from minift.peft.adapter import adapter_param_count

transformers = pytest.importorskip("transformers")

ROBERTA_BASE = {"vocab_size": 50265, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1, "num_labels": 2,
                "pad_token_id": 1}


def _roberta_base():
    config = ModelConfig.from_hf(transformers.RobertaConfig(**ROBERTA_BASE).to_dict())
    with torch.device("meta"):
        return build_model(config, get_family("roberta"), "classification")


def _count(model, trainable_only=True):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _peft_only(model):
    return sum(p.numel() for m in peft_modules(model).values() for p in m.adapter_params().values())


def test_full_fine_tuning_count_matches_transformers():
    model = _roberta_base()
    with torch.device("meta"):
        reference = transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**ROBERTA_BASE))
    assert _count(model) == sum(p.numel() for p in reference.parameters()) == 124_647_170


def test_bitfit_without_head_weights_count():
    model = apply(_roberta_base(), "bitfit", train_head=False)
    assert _count(model) == 102_914
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.endswith(".bias")}


@pytest.mark.parametrize("r, expected", [(2, 73_728), (8, 294_912), (64, 2_359_296), (256, 9_437_184)])
def test_lora_query_value_counts(r, expected):
    model = apply(_roberta_base(), "lora", r=r, alpha=2 * r, targets=["query", "value"])
    assert _peft_only(model) == expected
    head = sum(p.numel() for p in model.head.parameters())
    assert _count(model) == expected + head  # the head trains by default
    assert _count(apply(_roberta_base(), "lora", r=r, train_head=False)) == expected


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("size", [8, 64])
def test_adapter_counts_follow_the_formula(size, placement):
    model = apply(_roberta_base(), "adapter", size=size, placement=placement, train_head=False)
    assert _count(model) == _peft_only(model) == adapter_param_count(768, size, 12, placement)
    assert len(peft_modules(model)) == 12 * (2 if placement == "houlsby" else 1)


def test_summary_matches_peft_print_trainable_parameters(tiny, capsys):
    peft = pytest.importorskip("peft")
    t = tiny("llama", "causal-lm")
    ours = apply(t.load(), "lora", r=4, alpha=8, targets=["q_proj", "v_proj"])
    reference = peft.get_peft_model(t.hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    capsys.readouterr()
    reference.print_trainable_parameters()
    assert trainable_summary(ours) == capsys.readouterr().out.strip()


def test_summary_format_on_the_table():
    model = apply(_roberta_base(), "lora", r=8, train_head=False)
    total = 124_647_170 + 294_912  # the base plus the LoRA matrices
    assert trainable_summary(model) == (
        f"trainable params: 294,912 || all params: {total:,d} || trainable%: {100 * 294_912 / total:.4f}")
