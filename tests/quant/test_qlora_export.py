"""What leaves a QLoRA model: the merged export (dequantised and merged in fp32) loads as an ordinary checkpoint and
computes what the QLoRA model computes; peft's adapter format and minift's trainable state are a LoRA's; merging in
place is refused. And the compute dtype: a bf16 matmul on fp32 parameters (what a CUDA run does)."""
from __future__ import annotations

import json

import kit
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minift import peft
from minift.peft.lora import LoRANF4Linear
from minift.quant import NF4Config, NF4Linear, nf4_layers


@pytest.fixture
def qlora(tiny):
    """A tiny Llama checkpoint loaded in 4 bits with LoRA on q, v whose B is not zero (so merging matters)."""
    checkpoint = tiny("llama", "causal-lm")
    model = peft.apply(checkpoint.load(quantize="nf4"), "lora", r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRANF4Linear):
                m.lora_B.normal_(0.0, 0.1)
    return checkpoint, model.eval()


def test_save_merged_dequantises_and_merges_in_fp32(qlora, tmp_path):
    checkpoint, model = qlora
    batch = kit.batch("llama")
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    peft.save_merged(model, tmp_path / "merged")
    assert model.state_dict().keys() == state_before.keys()  # the model is left as it was
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
    loaded = kit.Tiny(None, tmp_path / "merged", "causal-lm").load()  # an ordinary fp checkpoint
    assert not nf4_layers(loaded) and not any(isinstance(m, LoRANF4Linear) for m in loaded.modules())
    layer = model.blocks[0].self_attn.q_proj
    expected = layer.dequantized_weight(torch.float32) + layer.delta_weight()
    assert torch.equal(loaded.blocks[0].self_attn.q_proj.weight, expected)
    k = model.blocks[0].self_attn.k_proj  # a 4-bit layer without LoRA: its dequantised weight
    assert torch.equal(loaded.blocks[0].self_attn.k_proj.weight, k.dequantized_weight(torch.float32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), model(**batch), rtol=1e-4, atol=1e-4)


def test_export_and_trainable_state_are_a_loras(qlora, tmp_path):
    checkpoint, model = qlora
    fp = peft.apply(checkpoint.load(), "lora", r=4, alpha=8, dropout=0.0)
    peft.export_peft(model, tmp_path / "q")
    peft.export_peft(fp, tmp_path / "fp")
    from safetensors.torch import load_file

    assert load_file(tmp_path / "q" / "adapter_model.safetensors").keys() == \
        load_file(tmp_path / "fp" / "adapter_model.safetensors").keys()
    config = json.loads((tmp_path / "q" / "adapter_config.json").read_text())
    assert config["target_modules"] == json.loads((tmp_path / "fp" / "adapter_config.json").read_text())[
        "target_modules"]

    peft.save_trainable(model, tmp_path / "state")
    again = peft.load_trainable(checkpoint.load(quantize="nf4"), tmp_path / "state").eval()  # onto a 4-bit base
    on_fp = peft.load_trainable(checkpoint.load(), tmp_path / "state").eval()  # onto the fp base
    batch = kit.batch("llama")
    with torch.no_grad():
        assert torch.equal(again(**batch), model(**batch))
        error = (on_fp(**batch) - model(**batch)).norm() / model(**batch).norm()
    assert error < 0.3  # NF4's rounding of the base (0.11 here)


def test_merging_in_place_is_refused(qlora):
    _, model = qlora
    with pytest.raises(NotImplementedError, match="merged_linear"):
        peft.merge(model)
    peft.unmerge(model)  # never merged: nothing to undo


def test_bf16_compute_on_fp32_parameters():
    """A CUDA run's layer (minift.quant.compute_dtype_for): fp32 input and LoRA, the 4-bit matmul in bf16."""
    linear = nn.Linear(96, 80)
    layer = NF4Linear.from_linear(linear, compute_dtype=torch.bfloat16)
    assert (layer.dtype, layer.compute_dtype) == (torch.float32, torch.bfloat16)
    x = torch.randn(3, 96, requires_grad=True)
    y = layer(x)
    assert y.dtype == torch.float32
    w = layer.dequantized_weight(torch.bfloat16)
    assert torch.equal(y, F.linear(x.bfloat16(), w, linear.bias.bfloat16()).float())
    lora = LoRANF4Linear.from_nf4(layer, r=4, alpha=8)
    nn.init.normal_(lora.lora_B)
    assert lora.lora_A.dtype == torch.float32
    lora(x).sum().backward()
    assert lora.lora_A.grad is not None and lora.lora_B.grad.dtype == torch.float32 and x.grad is not None


def test_init_normal_and_shared_weights():
    layer = NF4Linear(128, 64, bias=False, double_quant=True).init_normal_(0.02)
    w = layer.dequantized_weight()
    assert 0.015 < w.std().item() < 0.025 and w.shape == (64, 128)
    lora = LoRANF4Linear.from_nf4(layer, r=2, alpha=4)
    assert lora.weight_codes is layer.weight_codes and lora.weight_absmax is layer.weight_absmax
    with pytest.raises(TypeError, match="plain NF4Linear"):
        LoRANF4Linear.from_nf4(lora, r=2, alpha=4)
    with pytest.raises(ValueError, match="does not fit"):
        layer.set_weight(NF4Linear(64, 64, bias=False).init_normal_().nf4_weight)
    assert NF4Config(targets=["q_proj"]).targets == ("q_proj",)  # hashable, usable as a cache key
