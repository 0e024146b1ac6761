"""The estimator's activation term against the bytes autograd really saves in our models (CPU, CI).

For every family and method, with and without gradient checkpointing, ``trace_activations`` (the arithmetic
the estimator uses) must match ``measure_saved`` (storages of the tensors ``saved_tensors_hooks`` sees, plus
the inputs checkpointed blocks keep) within 5%. The models are the test kit's (``tests/kit.py``); under bf16
autocast their frozen linear weights are stored in bf16 first, as ``minift.train``'s recipe does
(``frozen_in_compute_dtype``), so that autocast copies only what the estimate says it copies.
"""

import kit
import pytest
import torch

from minift.memory.activations import Batch, trace_activations
from minift.memory.saved import measure_saved
from minift.memory.tracer import FP32, HALF
from minift.peft.config import Method
from minift.peft.io import saved_names
from minift.precision import frozen_in_compute_dtype

FAMILY_HEADS = {"bert": "classification", "roberta": "token-classification", "gpt2": "causal-lm",
                "gpt_neo": "causal-lm", "llama": "causal-lm"}
METHODS = ["full", *kit.PEFT_OPTIONS]
B, T = 2, 12


def tiny(family: str, dropout: float = 0.0):
    """The kit's tiny config; Llama with attention biases so that BitFit has something to train."""
    return kit.model_config(family, dropout=dropout, **({"attention_bias": True} if family == "llama" else {}))


def method(name: str, **options) -> Method:
    """The kit's method sizes for width 32, every other option minift.peft's default."""
    return Method.of(name, **{**kit.PEFT_OPTIONS.get(name, {}), **options})


def _compare(family, head, name, checkpointing=False, padded=False, dropout=0.0, precision="fp32",
             tolerance=0.05, options=None):
    config = tiny(family, dropout)
    peft = method(name, **(options or {}))
    model = kit.random_model(config, head, peft, checkpointing=checkpointing)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    if precision == "mixed":  # the recipe's frozen-weight cast (one process): saved parameters stay fp32
        frozen_in_compute_dtype(model, "bf16", skip=saved_names(model))
    batch = kit.batch(family, B, T, "right" if padded else None, head=head, num_labels=config.num_labels)
    amp = torch.bfloat16 if precision == "mixed" else None
    measured = measure_saved(model, batch, head, autocast_dtype=amp)
    est = trace_activations(config, peft, Batch(B, T, padded), head, device="cpu",
                            autocast=precision == "mixed", param_itemsize=HALF if precision == "bf16" else FP32,
                            grad_checkpointing=checkpointing)
    assert measured.total > 0
    assert est.total == pytest.approx(measured.total, rel=tolerance), (measured.groups, est)
    return measured, est


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("family", list(FAMILY_HEADS))
def test_activation_bytes_match_saved_tensors(family, name, checkpointing):
    _compare(family, FAMILY_HEADS[family], name, checkpointing)


@pytest.mark.parametrize("family", list(FAMILY_HEADS))
def test_per_layer_bytes_match_without_checkpointing(family):
    measured, est = _compare(family, FAMILY_HEADS[family], "full", dropout=0.1, padded=True)
    for i, layer in enumerate(est.per_layer):
        assert layer == pytest.approx(measured.layer(i), rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["full", "lora", "prompt"])
@pytest.mark.parametrize("family", list(FAMILY_HEADS))
def test_dropout_and_padding(family, name):
    """Dropout masks (CPU: input dtype), CPU attention dropout → math SDPA (T×T), explicit padding masks."""
    _compare(family, FAMILY_HEADS[family], name, padded=True, dropout=0.1)
    _compare(family, FAMILY_HEADS[family], name, checkpointing=True, padded=True, dropout=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "mixed"])
@pytest.mark.parametrize("name", ["full", "lora"])
@pytest.mark.parametrize("family", list(FAMILY_HEADS))
def test_low_precision(family, name, precision):
    """Pure bf16 weights, and fp32 weights under bf16 autocast (casts of inputs kept, weight copies apart)."""
    measured, est = _compare(family, FAMILY_HEADS[family], name, dropout=0.1, precision=precision)
    if precision == "mixed":  # LoRA: copies of A and B, and of a tied LM head; the frozen base has none
        assert measured.weight_copies > 0
        assert est.weight_copies == pytest.approx(measured.weight_copies, rel=0.05)


@pytest.mark.parametrize("head", ["classification", "token-classification", "regression"])
@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_other_heads(family, head):
    _compare(family, head, "lora", dropout=0.1)


def test_checkpointing_keeps_less():
    _, stored = _compare("llama", "causal-lm", "full")
    _, ckpt = _compare("llama", "causal-lm", "full", checkpointing=True)
    assert ckpt.total < stored.total
    assert ckpt.block_inputs == 2 * B * T * 32 * 4 + 2 * T * 8 * 4  # two block inputs + RoPE cos/sin


@pytest.mark.parametrize("family,name,options", [
    ("llama", "lora", {"dropout": 0.0}),  # the estimator's default before it took minift.peft's
    ("llama", "lora", {"targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}),
    ("gpt2", "lora", {"targets": ["c_attn", "c_proj", "c_fc"], "r": 2}),
    ("bert", "adapter", {"placement": "pfeiffer", "activation": "gelu"}),
    ("gpt_neo", "adapter", {"size": None, "reduction_factor": 4, "activation": "tanh"}),
    ("bert", "bitfit", {}),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={v}" for k, v in v.items()) or "defaults")
def test_method_options(family, name, options):
    """Whatever the options change (targets, rank, dropout, placement, activation, size) the real model has."""
    _compare(family, FAMILY_HEADS[family], name, dropout=0.1, options=options)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_frozen_head(family):
    """train_head=False: the head keeps no input for its weight's gradient."""
    _compare(family, "classification", "lora", dropout=0.1, options={"train_head": False})


@pytest.mark.parametrize("model_type,fields", [
    ("qwen2", {"num_kv_heads": 2, "hidden_act": "silu"}),  # q/k/v biases, o_proj without
    ("mistral", {"num_kv_heads": 2, "hidden_act": "silu", "attention_layers": ["local", "local"], "window_size": 4}),
])
@pytest.mark.parametrize("name", ["full", "lora", "bitfit", "prompt"])
def test_llama_spec_serves_qwen2_and_mistral(model_type, fields, name):
    """Qwen2 and Mistral are Llama's forward and their families carry Llama's MemorySpec (their biases and sliding
    windows are read from the model and the config), so the tape matches what their models save."""
    from minift.models.config import ModelConfig

    if name == "bitfit" and model_type == "mistral":
        pytest.skip("Mistral has no biases")
    config = ModelConfig(model_type=model_type, vocab_size=100, hidden_size=32, num_layers=2, num_heads=4,
                         intermediate_size=64, max_position_embeddings=64, attention_dropout=0.1, pad_token_id=0,
                         **fields)
    peft = method(name)
    model = kit.random_model(config, "causal-lm", peft)
    for padded in (False, True):
        batch = kit.batch("llama", B, T, "right" if padded else None, head="causal-lm")
        measured = measure_saved(model, batch, "causal-lm")
        est = trace_activations(config, peft, Batch(B, T, padded), "causal-lm", device="cpu")
        assert est.total == pytest.approx(measured.total, rel=0.05), (measured.groups, est)
