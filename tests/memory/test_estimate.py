"""Estimator arithmetic against independent counts and the paper's formula; phases; what fits; bad input."""
import math

import pytest

from minift.memory.activations import Batch, trace_activations
from minift.memory.estimate import Setup, estimate, fits, largest_batch
from minift.memory.params import model_facts
from minift.memory.tracer import HALF
from minift.models.presets import resolve_model, shape_for_params
from minift.peft.config import Method


@pytest.fixture(scope="module")
def llama3b():
    return resolve_model("llama-3.2-3b")[0]


@pytest.mark.parametrize("precision,weight_bytes", [("fp32", 4), ("bf16", 4), ("fp16", 4), ("bf16-pure", 2)])
def test_weights_gradients_adamw_states(llama3b, precision, weight_bytes):
    P = model_facts(llama3b, "causal-lm", Method()).params.total
    e = estimate(llama3b, Method(), Setup(precision=precision))
    assert (e.weights, e.gradients, e.optimizer_states) == (P * weight_bytes, P * weight_bytes, 2 * P * weight_bytes)
    assert e.steady == e.weights + e.optimizer_states


@pytest.mark.parametrize("optimizer,state_bytes,temporaries", [("sgd", 0, 1), ("sgd-momentum", 4, 1),
                                                                ("adamw-fused", 8, 0)])
def test_other_optimizers(llama3b, optimizer, state_bytes, temporaries):
    """SGD with weight decay makes grad + wd·param per tensor (one of the largest, the embedding); fused none."""
    e = estimate(llama3b, Method(), Setup(optimizer=optimizer))
    assert e.optimizer_states == state_bytes * e.params.trainable
    assert e.optimizer_temporaries == temporaries * llama3b.vocab_size * llama3b.hidden_size * 4


def test_optimizer_temporaries(llama3b):
    """foreach: sqrt(v) of every tensor at once; per-tensor: two temporaries of the largest (the embedding)."""
    foreach = estimate(llama3b, Method(), Setup(optimizer="adamw-foreach"))
    loop = estimate(llama3b, Method(), Setup(optimizer="adamw"))
    assert foreach.optimizer_temporaries == foreach.gradients
    assert loop.optimizer_temporaries == 2 * llama3b.vocab_size * llama3b.hidden_size * 4
    assert foreach.phases["optimizer step"] - loop.phases["optimizer step"] == (
        foreach.optimizer_temporaries - loop.optimizer_temporaries)


def test_8bit_what_if(llama3b):
    e = estimate(llama3b, Method(), Setup(optimizer="adamw-8bit"))
    assert e.optimizer_states == pytest.approx(2 * e.params.trainable, rel=0.04)


def test_peft_has_no_gradients_or_states_for_frozen_weights(llama3b):
    full = estimate(llama3b, Method(), Setup(batch_size=2))
    lora = estimate(llama3b, Method("lora"), Setup(batch_size=2))
    r, C, kv = 8, llama3b.hidden_size, llama3b.num_kv_heads * llama3b.head_dim
    trainable = llama3b.num_layers * (r * (C + C) + r * (C + kv))  # LoRA on q (C→C) and v (C→kv)
    assert lora.params.trainable == trainable
    assert lora.gradients == 4 * trainable and lora.optimizer_states == 8 * trainable
    assert lora.weights == full.weights + 4 * trainable
    # frozen linears keep no inputs, but norms/attention/activations still keep theirs: less, yet far from zero
    assert 0.5 * full.activations.total < lora.activations.total < full.activations.total
    assert lora.peak < full.peak / 2


def test_korthikanti_formula_for_a_gpt_layer():
    """Korthikanti et al. 2022 (arXiv:2205.05198), eq. 1: a GPT layer in 16-bit with dropout keeps
    sbh(34 + 5as/h) bytes with non-fused attention (1-byte masks). PyTorch's math attention kernel computes in
    fp32, so q·√scale, k·√scale, the v copy (4 + 2 more sbh) and the softmax and dropped probabilities
    (4as²b more) are twice the paper's 16-bit sizes; the LayerNorms also keep fp32 mean and rstd (16sb)."""
    config = resolve_model("gpt2")[0]
    b, s, h, a = 2, 256, config.hidden_size, config.num_heads
    act = trace_activations(config, Method(), Batch(b, s), "causal-lm", device="cuda", param_itemsize=HALF,
                            attention="eager")
    paper = s * b * h * (34 + 5 * a * s / h)
    assert act.per_layer[1] == paper + 6 * s * b * h + 4 * a * s * s * b + 16 * s * b
    fused = trace_activations(config, Method(), Batch(b, s), "causal-lm", device="cuda", param_itemsize=HALF)
    # flash keeps no T×T tensor and no q/k/v copies: the paper's 5as²b and its 16-bit q, k, v (6sbh) go, the
    # fused qkv output (6sbh) stays kept, the attention output (2sbh, also c_proj's input) replaces the paper's
    # c_proj input, and an fp32 log-sum-exp per query and head (4as·b) comes in
    assert fused.per_layer[1] == s * b * h * 34 + 16 * s * b + 4 * a * s * b


def test_checkpointing_trades_activations_for_one_recomputed_block(llama3b):
    stored = estimate(llama3b, Method(), Setup(batch_size=8))
    ckpt = estimate(llama3b, Method(), Setup(batch_size=8, gradient_checkpointing=True))
    B, T, C = 8, 512, llama3b.hidden_size
    rope = 2 * T * llama3b.head_dim * 4
    assert ckpt.activations.layers == llama3b.num_layers * B * T * C * 4 + rope
    assert ckpt.peak < stored.peak


def test_eager_attention_keeps_the_scores(llama3b):
    sdpa = estimate(llama3b, Method(), Setup(batch_size=1, max_length=1024))
    eager = estimate(llama3b, Method(), Setup(batch_size=1, max_length=1024, attention="eager"))
    T, H = 1024, llama3b.num_heads
    # fp32 softmax output per layer at least (no dropout in Llama)
    assert eager.activations.per_layer[1] - sdpa.activations.per_layer[1] >= 0.95 * H * T * T * 4


def test_logits_buffers_scale_with_the_vocabulary(llama3b):
    e = estimate(llama3b, Method("lora"), Setup(batch_size=4))
    B, T, V = 4, 512, llama3b.vocab_size
    assert e.activations.logits == B * (T - 1) * V * 4 + B * (T - 1) * 8 + 4  # log-softmax, targets, weight
    assert e.logits_buffers >= B * T * V * 4


def test_peak_is_a_phase_not_a_sum(llama3b):
    e = estimate(llama3b, Method(), Setup(batch_size=4))
    total = e.weights + e.gradients + e.optimizer_states + e.optimizer_temporaries + e.activations.total
    assert e.peak == max(e.phases.values()) < total + e.logits_buffers


def test_peak_grows_with_batch(llama3b):
    peaks = [estimate(llama3b, Method("lora"), Setup(batch_size=b)).peak for b in (1, 2, 4, 8)]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]


def test_largest_batch(llama3b):
    gpu = 80 * 10**9
    b = largest_batch(llama3b, Method("lora"), Setup(), gpu)
    assert b > 1
    assert fits(estimate(llama3b, Method("lora"), Setup(batch_size=b)), gpu)
    assert not fits(estimate(llama3b, Method("lora"), Setup(batch_size=b + 1)), gpu)
    assert largest_batch(llama3b, Method(), Setup(), 10 * 10**9) == 0


def test_params_shape_is_about_the_requested_size():
    for n in (1e8, 1e9, 3e9, 8e9, 7e10):
        config, description = shape_for_params(n)
        total = model_facts(config, "causal-lm", Method()).params.total
        assert math.isclose(total, n, rel_tol=0.1)
        assert "assumed" in description and str(config.num_layers) in description


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch-size"), ({"max_length": -3}, "max-length"), ({"precision": "fp8"}, "precision"),
    ({"grad_accum": 0}, "grad-accum"),
    ({"optimizer": "adam"}, "optimizer"), ({"attention": "flash"}, "attention")])
def test_bad_setup(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Setup(**kwargs)


def test_precision_names_are_minift_trains():
    """bf16 is autocast (fp32 weights) as in minift.train; the earlier mixed-* spellings are aliases."""
    assert Setup(precision="mixed-bf16").precision == "bf16" and Setup(precision="mixed-fp16").precision == "fp16"
    assert Setup(precision="bf16").autocast and Setup(precision="bf16").param_itemsize == 4
    assert not Setup(precision="bf16-pure").autocast and Setup(precision="bf16-pure").param_itemsize == 2


def test_lora_dropout_is_counted(llama3b):
    """minift.peft's default LoRA dropout (0.05) keeps a mask and a dropped copy of each target's input."""
    without = estimate(llama3b, Method.of("lora", dropout=0.0), Setup())
    default = estimate(llama3b, Method("lora"), Setup())
    B, T, C = 1, 512, llama3b.hidden_size
    # per layer: the shared input (kept once without dropout) → two bool masks and two fp32 copies (q and v)
    extra = 2 * B * T * C * (1 + 4) - B * T * C * 4
    assert default.activations.per_layer[1] - without.activations.per_layer[1] == extra


def test_bad_input():
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        Method("qlora")
    with pytest.raises(ValueError, match="LoRA r must be a positive integer"):
        Method.of("lora", r=0)
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 512"):
        estimate(resolve_model("bert-base")[0], Method(), Setup(max_length=1000))
    with pytest.raises(ValueError, match="prompt n=20 cannot run 512-token sequences.*--prompt-length"):
        estimate(resolve_model("roberta-base")[0], Method("prompt"), Setup())
    with pytest.raises(ValueError, match="no causal-lm head"):
        estimate(resolve_model("bert-base")[0], Method(), Setup(head="causal-lm"))
    with pytest.raises(ValueError, match="unknown model"):
        resolve_model("llama-9b")
    with pytest.raises(ValueError, match="--params"):
        shape_for_params("three billion")
