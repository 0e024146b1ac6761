"""quantize_model on a tiny random Llama, and the PEFT methods on its 4-bit base (QLoRA §3, Eq. 5): what is swapped,
what trains, that the 4-bit codes never change, the LoRA merged export, and the byte count on the meta device.

The order is a run's: quantise the frozen base (here ``quantize_model``; ``load_pretrained(quantize=...)`` in
test_load_quantized.py), then ``minift.peft.apply``, which picks the NF4 PEFT layers from the base layer's type."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minift import peft
from minift.models.config import ModelConfig
from minift.models.load import build_model
from minift.models.registry import get_family
from minift.peft.adapter import AdapterNF4Linear
from minift.peft.io import load_trainable_state, trainable_state
from minift.peft.lora import LoRANF4Linear
from minift.quant import NF4Config, NF4Linear, nf4_bytes, nf4_layers, quantize_model, quantized_bytes

LINEARS_PER_BLOCK = 7  # q, k, v, o, gate, up, down


def tiny_llama(device=None, **fields) -> nn.Module:
    """2 blocks, width 64, vocab 100; linears N(0, 0.02²), embeddings N(0, 1), norms at 1."""
    config = ModelConfig.from_hf({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
                                  "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                                  "num_key_value_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0,
                                  "tie_word_embeddings": False, **fields})
    with torch.device(device or "cpu"):
        model = build_model(config, get_family("llama"), "causal-lm")
    if device != "meta":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, 0.02)
                    if module.bias is not None:
                        module.bias.normal_(0.0, 0.02)
            model.get_input_embeddings().weight.normal_()
    return model.train()


def nf4_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers() if name.rpartition(".")[2].startswith("weight_")}


def train_steps(model: nn.Module, steps: int = 3) -> list[float]:
    """A few AdamW steps of next-token loss on a fixed random batch; returns the losses."""
    ids = torch.randint(1, 100, (2, 12))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        logits = model(input_ids=ids)  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, 100), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_quantize_model_swaps_the_block_linears_only():
    model = tiny_llama()
    reference = copy.deepcopy(model)
    embeddings, head = model.get_input_embeddings(), model.head
    fp_bytes = quantized_bytes(model)
    linear_numel = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear))
    quantize_model(model, NF4Config(double_quant=True))
    assert len(nf4_layers(model)) == 2 * LINEARS_PER_BLOCK
    assert not any(type(m) is nn.Linear for m in model.blocks.modules())
    assert model.get_input_embeddings() is embeddings and model.head is head and type(head) is nn.Linear
    numel = {m.in_features * m.out_features for m in nf4_layers(model).values()}
    assert quantized_bytes(model) == fp_bytes - 4 * linear_numel + sum(
        m.nbytes for m in nf4_layers(model).values())
    assert numel  # the layers kept their features
    ids = torch.randint(1, 100, (2, 9))
    with torch.no_grad():
        expected, got = reference(input_ids=ids), model(input_ids=ids)
    assert ((got - expected).norm() / expected.norm()).item() < 0.05


def test_quantize_model_targets():
    model = quantize_model(tiny_llama(), NF4Config(targets=["q_proj", "mlp.down_proj"]))
    assert sorted(name.rpartition(".")[2] for name in nf4_layers(model)) == ["down_proj"] * 2 + ["q_proj"] * 2
    with pytest.raises(ValueError, match="match no linear layer"):
        quantize_model(tiny_llama(), NF4Config(targets=["query"]))


def test_lora_on_nf4_starts_at_the_base_trains_only_lora_and_never_changes_the_codes():
    plain = quantize_model(tiny_llama())
    model = peft.apply(copy.deepcopy(plain), "lora", r=4, alpha=8, dropout=0.0)
    lora = {name: m for name, m in model.named_modules() if isinstance(m, LoRANF4Linear)}
    assert sorted({name.rpartition(".")[2] for name in lora}) == ["q_proj", "v_proj"]
    ids = torch.randint(1, 100, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids), plain(input_ids=ids), rtol=0, atol=1e-6)  # B = 0
    codes = nf4_state(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{name}.{p}" for name in lora for p in ("lora_A", "lora_B")}
    losses = train_steps(model)
    assert losses[-1] < losses[0]
    assert all(m.lora_B.abs().sum() > 0 for m in lora.values())
    after = nf4_state(model)
    assert after.keys() == codes.keys() and all(torch.equal(after[k], codes[k]) for k in codes)


def test_lora_on_nf4_gradients_with_checkpointing_and_bf16_autocast():
    model = peft.apply(quantize_model(tiny_llama()), "lora", r=4, alpha=8, dropout=0.0)
    for m in model.modules():
        if isinstance(m, LoRANF4Linear):
            nn.init.normal_(m.lora_B, std=0.1)
    ids = torch.randint(1, 100, (2, 9))

    def grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids).float().logsumexp(-1).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = grads()
    model.gradient_checkpointing = True
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys() and all(g.abs().sum() > 0 for g in plain.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name])


def test_lora_on_nf4_merged_linear_equals_the_layer():
    model = peft.apply(quantize_model(tiny_llama()), "lora", r=4, alpha=8, dropout=0.0)
    layer = next(m for m in model.modules() if isinstance(m, LoRANF4Linear))
    nn.init.normal_(layer.lora_B, std=0.5)
    x = torch.randn(3, 64)
    merged = layer.merged_linear(torch.float32)
    assert type(merged) is nn.Linear
    with torch.no_grad():
        torch.testing.assert_close(merged(x), layer(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError):
        layer.merge()


def test_adapters_bitfit_and_prompt_train_on_an_nf4_base():
    adapter = peft.apply(quantize_model(tiny_llama()), "adapter", size=8)
    assert sum(isinstance(m, AdapterNF4Linear) for m in adapter.modules()) == 4  # houlsby: 2 per block
    bitfit = peft.apply(quantize_model(tiny_llama(attention_bias=True)), "bitfit")
    prompt = peft.apply(quantize_model(tiny_llama()), "prompt", length=4, init="random")
    for model in (adapter, bitfit, prompt):
        codes = nf4_state(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in trainable]
        train_steps(model, steps=2)
        assert trainable and all(not torch.equal(p, b) for p, b in zip(trainable, before))
        assert all(torch.equal(b, codes[name]) for name, b in nf4_state(model).items())
    assert {n.rpartition(".")[2] for n, p in bitfit.named_parameters() if p.requires_grad} == {"bias"}


def test_quantising_after_peft_is_an_error():
    with pytest.raises(ValueError, match="before applying a PEFT method"):
        quantize_model(peft.apply(tiny_llama(), "lora", r=4, alpha=8))
    with pytest.raises(ValueError, match="before applying a PEFT method"):
        quantize_model(peft.apply(tiny_llama(), "prompt", length=2, init="random"))


@pytest.mark.parametrize("double_quant", [False, True])
def test_quantized_bytes_on_the_meta_device(double_quant):
    model = tiny_llama(device="meta")
    numels = [m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear)]
    fp_bytes = quantized_bytes(model)
    quantize_model(model, NF4Config(double_quant=double_quant))
    assert all(b.is_meta for b in model.buffers())
    expected = fp_bytes - 4 * sum(numels) + sum(nf4_bytes(n, 64, double_quant) for n in numels)
    assert quantized_bytes(model) == expected
    assert all(isinstance(m, NF4Linear) for m in nf4_layers(model).values())


def test_qlora_trainable_state_has_the_keys_of_a_bf16_lora_and_reloads():
    base = tiny_llama()
    fp_lora = peft.apply(copy.deepcopy(base), "lora", r=4, alpha=8)
    qlora = peft.apply(quantize_model(copy.deepcopy(base)), "lora", r=4, alpha=8)
    train_steps(qlora, steps=1)
    state = trainable_state(qlora)
    assert state.keys() == trainable_state(fp_lora).keys()  # an adapter trained on 4 bits loads on the bf16 base
    load_trainable_state(fp_lora, state, "qlora")
    assert all(torch.equal(p, state[n]) for n, p in trainable_state(fp_lora).items())
    # a layer built on the meta device takes the whole saved state (codes, scales, LoRA) and gives the same output
    layer = qlora.blocks[0].self_attn.q_proj.eval()  # no LoRA dropout
    fresh = LoRANF4Linear(64, 64, r=4, alpha=8, bias=False, device="meta")
    fresh.load_state_dict(layer.state_dict(), assign=True)
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))
