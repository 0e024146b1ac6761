"""The estimator with a 4-bit base (``Setup(quantize="nf4")``, QLoRA): the weights are the NF4 codes and scales
the meta-built model holds, the frozen 4-bit linears keep nothing for backward and make no autocast copy (checked
against the bytes autograd saves in real quantised models), one dequantised layer is alive at a time (checked
against the CPU allocator's peak of real training steps), and full fine-tuning of a 4-bit base is refused."""
from __future__ import annotations

import json

import kit
import pytest
import torch

from minift.memory.__main__ import main
from minift.memory.activations import Batch, trace_activations
from minift.memory.estimate import Setup, estimate
from minift.memory.params import meta_model, model_facts
from minift.memory.profile import build_random_model
from minift.memory.saved import measure_saved
from minift.memory.timeline import profile_training_cpu
from minift.models.config import ModelConfig
from minift.models.presets import resolve_model
from minift.peft.config import Method
from minift.quant import NF4Config, dequantize_bytes, nf4_bytes, nf4_layers, quantized_bytes

HEADS = {"llama": "causal-lm", "bert": "classification", "gpt2": "causal-lm"}
# width 256: large enough for the dequantised weight and its temporaries to matter beside the activations
WIDE_LLAMA = ModelConfig.from_hf({"model_type": "llama", "vocab_size": 512, "hidden_size": 256,
                                  "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 4,
                                  "num_key_value_heads": 2, "max_position_embeddings": 128})
WIDE_BERT = ModelConfig.from_hf({"model_type": "bert", "vocab_size": 512, "hidden_size": 256, "num_hidden_layers": 2,
                                 "num_attention_heads": 4, "intermediate_size": 1024, "max_position_embeddings": 128,
                                 "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1})


@pytest.fixture(scope="module")
def llama3b():
    return resolve_model("llama-3.2-3b")[0]


@pytest.mark.parametrize("double_quant", [True, False])
def test_weights_are_what_the_quantised_meta_model_holds(llama3b, double_quant):
    setup = Setup(precision="bf16", quantize="nf4", double_quant=double_quant)
    e = estimate(llama3b, Method("lora"), setup)
    model = meta_model(llama3b, "causal-lm", Method("lora"), setup.nf4)
    assert e.weights == quantized_bytes(model)  # parameters in fp32 + the NF4 buffers, read off the model
    layers = nf4_layers(model)
    assert len(layers) == 7 * llama3b.num_layers
    numel = [m.in_features * m.out_features for m in layers.values()]
    assert e.params.quantized == sum(numel)
    unquantised = estimate(llama3b, Method("lora"), Setup(precision="bf16"))
    assert e.params.total == unquantised.params.total and e.params.trainable == unquantised.params.trainable
    # unquantised under autocast, minift.train stores the frozen block linears in bf16 (2 B): the NF4 bytes replace them
    assert e.weights == unquantised.weights - 2 * sum(numel) + sum(nf4_bytes(n, 64, double_quant) for n in numel)
    fp32 = estimate(llama3b, Method("lora"), Setup(precision="fp32", quantize="nf4", double_quant=double_quant))
    assert e.weights == fp32.weights  # the 4-bit layers are no nn.Linear: nothing else is cast (the LM head is tied)
    # one layer dequantised at a time, in bf16 (CUDA / autocast): the MLP's 8192 × 3072, with its temporaries
    assert e.dequantized == dequantize_bytes(8192 * 3072, 2, 64, double_quant)
    # LoRA's gradients and states are unchanged; the frozen 4-bit base makes no autocast copy (the tied LM head's
    # bf16 copy and LoRA's own remain), nor does the unquantised bf16 base minift.train stores
    assert (e.gradients, e.optimizer_states) == (unquantised.gradients, unquantised.optimizer_states)
    V, C = llama3b.vocab_size, llama3b.hidden_size
    assert V * C * 2 <= e.autocast_copies == unquantised.autocast_copies < V * C * 2 * 1.05
    assert unquantised.peak - e.peak == pytest.approx(unquantised.weights - e.weights, rel=0.03)


def test_the_3b_qlora_rows(llama3b):
    """The README's rows: QLoRA (LoRA r=8 on q,v, NF4 + double quantisation) saves at least what its weights save
    at every precision and batch (under autocast minift.train stores the unquantised frozen linears in bf16 and
    copies none of them: the copies saved are zero)."""
    for precision in ("fp32", "bf16", "bf16-pure"):
        for b in (1, 4):
            lora = estimate(llama3b, Method("lora"), Setup(batch_size=b, precision=precision))
            qlora = estimate(llama3b, Method("lora"), Setup(batch_size=b, precision=precision, quantize="nf4"))
            saved = lora.weights - qlora.weights + lora.autocast_copies - qlora.autocast_copies
            assert lora.peak - qlora.peak == pytest.approx(saved, rel=0.03), (precision, b)
    assert estimate(llama3b, Method("lora"), Setup(precision="bf16", quantize="nf4")).peak < 6.5 * 2**30


def test_full_fine_tuning_of_a_4bit_base_is_refused(llama3b):
    with pytest.raises(ValueError, match="4-bit .* base is frozen"):
        estimate(llama3b, Method("full"), Setup(quantize="nf4"))
    with pytest.raises(ValueError, match="unknown quantize"):
        Setup(quantize="int4")


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
@pytest.mark.parametrize("precision", ["fp32", "mixed"])
@pytest.mark.parametrize("name", ["lora", "adapter", "bitfit", "prompt"])
@pytest.mark.parametrize("family", list(HEADS))
def test_activations_of_a_quantised_model_match_saved_tensors(family, name, precision, checkpointing):
    """The tape with 4-bit linears (nothing kept, no autocast copy) against the bytes autograd saves in the real
    quantised model, weight copies included: to the byte."""
    config = kit.model_config(family, dropout=0.1, **({"attention_bias": True} if family == "llama" else {}))
    method, head, quantize = Method.of(name, **kit.PEFT_OPTIONS[name]), HEADS[family], NF4Config()
    amp = torch.bfloat16 if precision == "mixed" else None  # and the recipe's frozen-weight cast (an untied head)
    model = build_random_model(config, method, head, torch.device("cpu"), torch.float32, quantize,
                               "bf16" if amp else None)
    assert nf4_layers(model)
    model.gradient_checkpointing = checkpointing
    batch = kit.batch(family, 2, 12, "right", head=head, num_labels=config.num_labels)
    measured = measure_saved(model.train(), batch, head, autocast_dtype=amp)
    est = trace_activations(config, method, Batch(2, 12, True), head, device="cpu", autocast=amp is not None,
                            grad_checkpointing=checkpointing, quantize=quantize)
    assert est.total == measured.total, (measured.groups, est)
    assert est.weight_copies == measured.weight_copies


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-pure"])
@pytest.mark.parametrize("config,head,name,checkpointing", [
    (WIDE_LLAMA, "causal-lm", "lora", False), (WIDE_LLAMA, "causal-lm", "lora", True),
    (WIDE_LLAMA, "causal-lm", "adapter", False), (WIDE_BERT, "classification", "lora", False),
], ids=["llama-lora", "llama-lora-checkpointed", "llama-adapter", "bert-lora"])
def test_peak_of_quantised_training_steps_on_cpu(config, head, name, checkpointing, precision):
    """Real training steps of a quantised model, the CPU allocator's events replayed: each phase's peak and the
    steady state within 5% of the estimate (the forward's dequantised down projection, the backward's again)."""
    setup = Setup(batch_size=2, max_length=32, precision=precision, device="cpu", padded=True, head=head,
                  gradient_checkpointing=checkpointing, quantize="nf4")
    prof = profile_training_cpu(config, Method.of(name, **kit.PEFT_OPTIONS[name]), setup)
    assert prof.estimate.dequantized > 0
    for phase in prof.measured:
        assert abs(prof.error(phase)) < 5, (phase, prof.measured, prof.estimated)
    assert abs(prof.error("steady state after step 2")) < 0.5


def test_memory_command_with_quantize(capsys):
    assert main(["--model", "llama-3.2-1b", "--quantize", "nf4", "--precision", "bf16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["method"]: r for r in out["methods"]}
    assert "error" in rows["full"] and "4-bit" in rows["full"]["error"]
    lora = rows["lora r=8"]
    assert lora["dequantized"] > 0 and lora["quantized_weights"] == 16 * 2048 * (2 * 2048 + 2 * 512 + 3 * 8192)
    assert out["setup"]["quantize"] == "nf4" and out["setup"]["double_quant"] is True
    assert any("NF4" in line for line in out["assumptions"])
    assert main(["--model", "llama-3.2-1b", "--quantize", "nf4", "--double-quant", "false", "--method", "lora"]) == 0
    assert "dequantised layer" in capsys.readouterr().out


def test_facts_of_the_quantised_linears():
    facts = model_facts(WIDE_LLAMA, "causal-lm", Method("lora"), NF4Config())
    q = facts.linears["model.layers.0.self_attn.q_proj"]
    assert q.quantized and q.lora_r == 8 and not q.weight_trains
    assert not facts.linears["lm_head"].quantized
    assert facts.largest_quantized == 256 * 1024
