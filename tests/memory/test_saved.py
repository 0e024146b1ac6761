"""The estimator's activation term against the bytes autograd really saves in our models (CPU, CI).

For every family and method, with and without gradient checkpointing, ``trace_activations`` (the arithmetic
the estimator uses) must match ``measure_saved`` (storages of the tensors ``saved_tensors_hooks`` sees, plus
the inputs checkpointed blocks keep) within 5%.
"""
import pytest
import torch
from memory_tiny import FAMILY_HEADS, PEFT_OPTIONS, tiny_batch, tiny_config, tiny_model

from minift.memory.activations import Batch, trace_activations
from minift.memory.params import Method
from minift.memory.saved import measure_saved
from minift.memory.tracer import FP32, HALF

METHODS = list(PEFT_OPTIONS)


def _method(name: str) -> Method:
    return Method(name, adapter_size=8, prompt_length=5)


def _compare(family, head, method, checkpointing=False, padded=False, dropout=0.0, precision="fp32",
             tolerance=0.05):
    config = tiny_config(family, dropout=dropout)
    model = tiny_model(config, head, method, checkpointing)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    batch = tiny_batch(config, head, padded=padded)
    amp = torch.bfloat16 if precision == "mixed" else None
    measured = measure_saved(model, batch, head, autocast_dtype=amp)
    est = trace_activations(config, _method(method), Batch(2, 12, padded), head, device="cpu",
                            autocast=precision == "mixed", param_itemsize=HALF if precision == "bf16" else FP32,
                            grad_checkpointing=checkpointing)
    assert measured.total > 0
    assert est.total == pytest.approx(measured.total, rel=tolerance), (measured.groups, est)
    return measured, est


@pytest.mark.parametrize("checkpointing", [False, True], ids=["stored", "checkpointed"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", list(FAMILY_HEADS))
def test_activation_bytes_match_saved_tensors(family, method, checkpointing):
    _compare(family, FAMILY_HEADS[family], method, checkpointing)


@pytest.mark.parametrize("family", list(FAMILY_HEADS))
def test_per_layer_bytes_match_without_checkpointing(family):
    measured, est = _compare(family, FAMILY_HEADS[family], "full", dropout=0.1, padded=True)
    for i, layer in enumerate(est.per_layer):
        assert layer == pytest.approx(measured.layer(i), rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "prompt"])
@pytest.mark.parametrize("family", list(FAMILY_HEADS))
def test_dropout_and_padding(family, method):
    """Dropout masks (CPU: input dtype), CPU attention dropout → math SDPA (T×T), explicit padding masks."""
    _compare(family, FAMILY_HEADS[family], method, padded=True, dropout=0.1)
    _compare(family, FAMILY_HEADS[family], method, checkpointing=True, padded=True, dropout=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "mixed"])
@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("family", list(FAMILY_HEADS))
def test_low_precision(family, method, precision):
    """Pure bf16 weights, and fp32 weights under bf16 autocast (casts of inputs kept, weight copies apart)."""
    measured, est = _compare(family, FAMILY_HEADS[family], method, dropout=0.1, precision=precision)
    if precision == "mixed":
        assert measured.weight_copies > 0
        assert est.weight_copies == pytest.approx(measured.weight_copies, rel=0.05)


@pytest.mark.parametrize("head", ["classification", "token-classification", "regression"])
@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_other_heads(family, head):
    if head == "token-classification" and family not in ("bert", "roberta"):
        pytest.skip("decoders have no token-classification head")
    _compare(family, head, "lora", dropout=0.1)


def test_checkpointing_keeps_less():
    _, stored = _compare("llama", "causal-lm", "full")
    _, ckpt = _compare("llama", "causal-lm", "full", checkpointing=True)
    assert ckpt.total < stored.total
    assert ckpt.block_inputs == 2 * 2 * 12 * 32 * 4 + 2 * 12 * 8 * 4  # two block inputs + RoPE cos/sin
