"""LoRA / adapters with trained biases (peft's ``bias`` option): what trains, against peft's own choice; exported
with ``export_peft`` and loaded by ``PeftModel.from_pretrained`` with the same outputs and the same trainable count.

peft's meaning: ``bias="all"`` trains every bias of the model, ``"lora_only"`` the biases of the LoRA-wrapped layers.
Adapters: ``"all"`` the same, ``"adapter_only"`` the biases of the layers the adapters wrap.
"""
import pytest
import torch

from minift.peft import apply, export_peft, load_trainable, save_trainable
from minift.peft.apply import trainable_parameters
from minift.peft.bitfit import bias_params
from minift.peft.config import AdapterConfig, LoRAConfig, Method

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

TARGETS = ["query", "value"]


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _peft_model(hf, bias: str, head: str):
    task_type = "TOKEN_CLS" if head == "token-classification" else "SEQ_CLS"
    return peft.get_peft_model(hf, peft.LoraConfig(task_type=task_type, r=4, lora_alpha=8, target_modules=TARGETS,
                                                   bias=bias))


@pytest.mark.parametrize("bias", ["all", "lora_only"])
@pytest.mark.parametrize("family, head", [("roberta", "classification"), ("bert", "token-classification")])
def test_lora_bias_trains_what_peft_trains(tiny, family, head, bias):
    t = tiny(family, head)
    ours = apply(t.load(), "lora", r=4, alpha=8, targets=TARGETS, bias=bias)
    reference = _peft_model(t.hf, bias, head)
    assert _count(ours) == reference.get_nb_trainable_parameters()[0]
    wrapped_biases = {n for n, m in ours.named_modules() if hasattr(m, "lora_A")}
    trained_biases = {n.rpartition(".")[0] for n, p in trainable_parameters(ours).items() if n.endswith(".bias")
                      and not n.startswith(ours.head_spec.key + ".")}
    if bias == "all":
        assert trained_biases == {n.rpartition(".")[0] for n in bias_params(ours.backbone, ours.family.prefix + ".")}
    else:
        assert trained_biases == wrapped_biases
    assert ours.peft_spec.config.bias == bias and "bias=" + bias in ours.peft_spec.label()


def test_roberta_lora_bias_all_count_by_hand(tiny):
    """The count the NER report's 1,855,499 is made of, on the tiny RoBERTa (C = 32, F = 64, 2 layers, 3 labels):
    LoRA 2·2·r(C+C) + biases 2·(7C + F) + embeddings LayerNorm C + head (C·C + C) + (3C + 3)."""
    ours = apply(tiny("roberta", "classification").load(), "lora", r=4, targets=TARGETS, bias="all")
    C, F = 32, 64
    assert _count(ours) == 2 * 2 * 4 * (C + C) + 2 * (7 * C + F) + C + (C * C + C) + (3 * C + 3)


@pytest.mark.parametrize("bias", ["all", "lora_only"])
@pytest.mark.parametrize("family, head", [("roberta", "classification"), ("bert", "token-classification"),
                                          ("gpt2", "classification")])
def test_exported_lora_with_biases_loads_in_peft(tiny, tiny_batch, tmp_path, family, head, bias):
    t = tiny(family, head)
    targets = TARGETS if family != "gpt2" else ["c_attn"]
    ours = apply(t.load(), "lora", r=4, alpha=8, targets=targets, bias=bias)
    with torch.no_grad():  # non-zero LoRA matrices and moved biases: a round trip that drops them shows
        for p in trainable_parameters(ours).values():
            p.normal_(0, 0.3)
    folder = export_peft(ours, tmp_path / "exported")
    import json

    assert json.loads((folder / "adapter_config.json").read_text())["bias"] == bias
    loaded = peft.PeftModel.from_pretrained(t.hf, folder, is_trainable=True)
    assert loaded.get_nb_trainable_parameters()[0] == _count(ours)
    loaded.eval()
    b = tiny_batch(family)
    with torch.no_grad():
        got, want = ours.eval()(**b), loaded(**b).logits
    if head == "token-classification":
        keep = b["attention_mask"].bool()
        got, want = got[keep], want[keep]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bias", ["none", "all", "adapter_only"])
def test_adapter_bias(tiny, tiny_batch, tmp_path, bias):
    t = tiny("bert", "classification")
    ours = apply(t.load(), Method("adapter", AdapterConfig(size=8, bias=bias)))
    base = apply(t.load(), "adapter", size=8)
    wrapped = [m for m in ours.modules() if hasattr(m, "adapter")]
    extra = {"none": 0, "all": sum(p.numel() for p in bias_params(t.load().backbone).values()),
             "adapter_only": sum(m.bias.numel() for m in wrapped)}[bias]
    assert _count(ours) == _count(base) + extra
    with torch.no_grad():
        for p in trainable_parameters(ours).values():
            p.normal_(0, 0.3)
    save_trainable(ours, tmp_path / "saved")  # what trains is what is saved, and it loads back the same
    again = load_trainable(t.load(), tmp_path / "saved")
    assert again.peft_spec.config.bias == bias
    b = tiny_batch("bert")
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(**b), ours.eval()(**b))


def test_bias_choices_are_checked():
    with pytest.raises(ValueError, match="LoRA bias must be one of none, all, lora_only"):
        LoRAConfig(bias="adapter_only")
    with pytest.raises(ValueError, match="adapter bias must be one of none, all, adapter_only"):
        AdapterConfig(bias="lora_only")


def test_bias_flags_reach_the_method():
    from minift.train.flags import resolve_config

    config = resolve_config(["--task", "sst2", "--method", "lora", "--lora-bias", "all", "--adapter-bias",
                             "adapter_only"])
    assert config.method_spec.config.bias == "all" and config.adapter.bias == "adapter_only"
