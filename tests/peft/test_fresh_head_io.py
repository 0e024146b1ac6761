"""A frozen head (``train_head=False``) that the loader initialised, because the base checkpoint has none, must
survive ``save_trainable`` / ``load_trainable`` and ``export_peft``: reloading onto a fresh base model, under
another torch seed, gives the same logits exactly."""
import json

import pytest
import torch

from minift.models import load_pretrained
from minift.peft import apply, export_peft, load_trainable, save_trainable
from minift.peft.io import CONFIG_NAME

transformers = pytest.importorskip("transformers")
NO_POOLER = {"add_pooling_layer": False}  # BertModel arguments: a BERT checkpoint without a pooler


def trained(folder, method: str, seed: int, **options):
    """``method`` applied with a frozen head; every trainable tensor moved off its initial value."""
    torch.manual_seed(seed)
    model = apply(load_pretrained(folder, head="classification", num_labels=3), method, train_head=False, **options)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("family, method, options", [
    ("bert", "bitfit", {}),
    ("bert", "lora", {"r": 2}),
    ("bert", "prompt", {"length": 3}),
    ("llama", "lora", {"r": 2}),
    ("llama", "prompt", {"length": 3}),
])
def test_frozen_fresh_head_is_saved_and_restored(tiny, tiny_batch, tmp_path, family, method, options):
    folder = tiny(family).folder
    ours = trained(folder, method, seed=1, **options)
    assert ours.fresh_keys and not any(p.requires_grad for p in ours.head.parameters() if p.dim() > 1)
    saved = save_trainable(ours, tmp_path / "saved")
    torch.manual_seed(2)  # a different random head in the fresh base model
    fresh = load_pretrained(folder, head="classification", num_labels=3)
    assert not torch.equal(fresh.head.weight, ours.head.weight)
    again = load_trainable(fresh, saved)
    b = tiny_batch(family)
    with torch.no_grad():
        assert torch.equal(again(**b), ours(**b))
    config = json.loads((saved / CONFIG_NAME).read_text())
    saved_names = set(config["saved"]["frozen"]) | set(config["saved"]["trainable"])  # what the file holds
    prefix = "model." if method == "prompt" else ""
    assert {prefix + key for key in ours.fresh_keys} <= saved_names


def test_fresh_pooler_is_saved_too(tiny, tiny_batch, tmp_path):
    """A BERT checkpoint without a pooler: the classification head reads a freshly initialised pooler, frozen
    under LoRA (and its weight under BitFit), so it is saved like the head."""
    folder = tiny("bert", model_kwargs=NO_POOLER).folder
    for method, options in (("lora", {"r": 2}), ("bitfit", {})):
        ours = trained(folder, method, seed=1, **options)
        assert "bert.pooler.dense.weight" in ours.fresh_keys
        saved = save_trainable(ours, tmp_path / method)
        torch.manual_seed(2)
        again = load_trainable(load_pretrained(folder, head="classification", num_labels=3), saved)
        b = tiny_batch("bert")
        with torch.no_grad():
            assert torch.equal(again(**b), ours(**b))


def test_load_checks_the_saved_frozen_tensors(tiny, tmp_path):
    folder = tiny("bert").folder
    saved = save_trainable(trained(folder, "lora", seed=1, r=2), tmp_path / "saved")
    from safetensors.torch import load_file, save_file

    from minift.peft.io import WEIGHTS_NAME

    tensors = load_file(str(saved / WEIGHTS_NAME))
    del tensors["classifier.weight"]
    save_file(tensors, str(saved / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="classifier.weight"):
        load_trainable(load_pretrained(folder, head="classification", num_labels=3), saved)


def test_exported_frozen_fresh_head_loads_in_peft(tiny, tiny_batch, tmp_path):
    """peft's ``modules_to_save`` carries the frozen head that transformers would otherwise draw at random."""
    peft = pytest.importorskip("peft")
    folder = tiny("llama").folder
    ours = trained(folder, "lora", seed=1, r=2)
    exported = export_peft(ours, tmp_path / "exported")
    assert json.loads((exported / "adapter_config.json").read_text())["modules_to_save"] == ["score"]
    torch.manual_seed(2)
    hf = transformers.LlamaForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    loaded = peft.PeftModel.from_pretrained(hf, exported).eval()
    b = tiny_batch("llama")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b).logits, ours(**b), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_minilm_bitfit_frozen_head_reloads_exactly(minilm_dir, tmp_path):
    torch.manual_seed(1)
    ours = apply(load_pretrained(minilm_dir, head="classification", num_labels=3), "bitfit", train_head=False)
    assert set(ours.fresh_keys) == {"classifier.weight", "classifier.bias"}
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    saved = save_trainable(ours, tmp_path / "saved")
    torch.manual_seed(2)
    again = load_trainable(load_pretrained(minilm_dir, head="classification", num_labels=3), saved)
    ids = torch.randint(1000, ours.config.vocab_size, (2, 16))
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, attention_mask=mask), ours(input_ids=ids, attention_mask=mask))


def test_version_1_folders_still_load(tiny, tiny_batch, tmp_path):
    """Folders written before the frozen tensors were saved (trainable tensors only) load as before."""
    folder = tiny("bert").folder
    ours = trained(folder, "lora", seed=1, r=2)
    ours.head.weight.requires_grad_(True)  # as a version-1 file of a trained head held it
    ours.head.bias.requires_grad_(True)
    saved = save_trainable(ours, tmp_path / "saved")
    config = json.loads((saved / CONFIG_NAME).read_text())
    assert config["saved"]["frozen"] == []
    config.update(version=1, train_head=True)
    del config["saved"]
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    again = load_trainable(load_pretrained(folder, head="classification", num_labels=3), saved)
    b = tiny_batch("bert")
    with torch.no_grad():
        assert torch.equal(again(**b), ours(**b))


def test_exported_fresh_pooler_loads_in_peft(tiny, tiny_batch, tmp_path):
    """A BERT checkpoint without a pooler: the exported adapter carries the frozen, fresh pooler next to the head."""
    peft = pytest.importorskip("peft")
    folder = tiny("bert", model_kwargs=NO_POOLER).folder
    ours = trained(folder, "lora", seed=1, r=2)
    exported = export_peft(ours, tmp_path / "exported")
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier", "bert.pooler.dense"]
    torch.manual_seed(2)
    hf = transformers.BertForSequenceClassification.from_pretrained(folder, num_labels=3).eval()
    loaded = peft.PeftModel.from_pretrained(hf, exported).eval()
    b = tiny_batch("bert")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**b).logits, ours(**b), rtol=0, atol=1e-5)


def test_export_refuses_lora_on_a_fresh_module(tiny, tmp_path):
    folder = tiny("bert", model_kwargs=NO_POOLER).folder
    ours = trained(folder, "lora", seed=1, r=2, targets=["query", "pooler.dense"])
    with pytest.raises(ValueError, match="bert.pooler.dense"):
        export_peft(ours, tmp_path / "exported")


def test_merged_lora_on_a_fresh_module_reloads(tiny, tiny_batch, tmp_path):
    """The frozen weight of a merged LoRA layer is saved without the update, which loading merges back in."""
    from minift.peft import merge

    folder = tiny("bert", model_kwargs=NO_POOLER).folder
    ours = merge(trained(folder, "lora", seed=1, r=2, targets=["query", "pooler.dense"]))
    saved = save_trainable(ours, tmp_path / "saved")
    torch.manual_seed(2)
    again = load_trainable(load_pretrained(folder, head="classification", num_labels=3), saved)
    b = tiny_batch("bert")
    with torch.no_grad():
        torch.testing.assert_close(again(**b), ours(**b), rtol=0, atol=1e-5)
