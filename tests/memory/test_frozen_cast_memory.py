"""The estimator under bf16 / fp16 autocast follows minift.train's frozen-weight cast
(``minift.precision.frozen_in_compute_dtype``, called by the recipe on one process and under DDP): the frozen
``nn.Linear`` weights and biases are stored once in the autocast dtype (2 B, not the fp32 master copy's 4) and
autocast makes no copy of them; trainable linears and a tied LM head keep theirs. FSDP, fp32, pure bf16 and full
fine-tuning are unchanged. Weights are checked against the bytes of real tiny models after the cast, copies
against what autograd really keeps (``measure_saved``), and ``--precision auto`` against ``minift.precision``.
"""
import json

import kit
import pytest
import torch

from minift.memory.__main__ import build_parser, main
from minift.memory.activations import Batch, trace_activations
from minift.memory.estimate import Setup, estimate
from minift.memory.params import build_meta_model, model_facts
from minift.memory.profile import build_random_model
from minift.memory.saved import measure_saved
from minift.models.presets import resolve_model
from minift.peft.config import Method
from minift.peft.io import saved_names
from minift.precision import frozen_in_compute_dtype, resolve
from minift.quant import nf4_layers
from minift.train.flags import CHOICES

HEADS = {"bert": "classification", "gpt2": "causal-lm", "llama": "causal-lm"}


@pytest.fixture(scope="module")
def llama3b():
    return resolve_model("llama-3.2-3b")[0]


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # a tied tensor once


def _cast_model(family: str, name: str, precision: str = "bf16") -> tuple:
    config, head, method = kit.model_config(family), HEADS[family], Method.of(name, **kit.PEFT_OPTIONS.get(name, {}))
    model = kit.random_model(config, head, method)
    uncast = _param_bytes(model)
    cast = frozen_in_compute_dtype(model, precision, skip=saved_names(model))  # as minift.train's recipe
    return config, head, method, model, uncast, cast


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["lora", "adapter", "prompt"])
@pytest.mark.parametrize("family", list(HEADS))
def test_weights_are_the_model_after_the_cast(family, name, precision):
    """A PEFT estimate's weights term is the bytes of the real model after ``frozen_in_compute_dtype``; fp32's is
    the bytes before it."""
    config, head, method, model, uncast, cast = _cast_model(family, name, precision)
    assert cast > 0 and _param_bytes(model) < uncast
    setup = Setup(batch_size=2, max_length=12, precision=precision, device="cpu", head=head)
    assert estimate(config, method, setup).weights == _param_bytes(model)
    assert estimate(config, method, Setup(max_length=12, device="cpu", head=head)).weights == uncast
    assert model_facts(config, head, method).compute_dtype_elements == (uncast - _param_bytes(model)) // 2


@pytest.mark.parametrize("family", list(HEADS))
def test_full_fine_tuning_and_pure_bf16_are_unchanged(family):
    """Full fine-tuning saves every parameter: nothing is cast; without autocast the cast does nothing."""
    config, head, method, model, uncast, cast = _cast_model(family, "full")
    assert cast == 0 and model_facts(config, head, method).compute_dtype_elements == 0
    assert estimate(config, method, Setup(precision="bf16", device="cpu", head=head, max_length=12)).weights == uncast
    lora = Method.of("lora", r=4)
    pure = estimate(config, lora, Setup(precision="bf16-pure", device="cpu", head=head, max_length=12))
    assert pure.weights == _param_bytes(build_meta_model(config, head, lora)) // 2


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_copies_are_what_autograd_keeps_with_and_without_the_cast(family):
    """bf16 autocast, LoRA: the uncast model keeps a bf16 copy of every frozen weight whose input needs a gradient
    (the tape with ``frozen_cast=False``); after the recipe's cast only LoRA's A and B (and a tied head) are copied,
    as the estimate says."""
    config, head = kit.model_config(family), HEADS[family]
    method = Method.of("lora", r=4)
    batch = kit.batch(family, 2, 12, head=head, num_labels=config.num_labels)
    model = kit.random_model(config, head, method)
    before = measure_saved(model, batch, head, autocast_dtype=torch.bfloat16).weight_copies
    frozen_in_compute_dtype(model, "bf16", skip=saved_names(model))
    after = measure_saved(model, batch, head, autocast_dtype=torch.bfloat16).weight_copies
    trace = {cast: trace_activations(config, method, Batch(2, 12), head, device="cpu", autocast=True,
                                     frozen_cast=cast).weight_copies for cast in (False, True)}
    assert 0 < after < before
    assert (trace[False], trace[True]) == (pytest.approx(before, rel=0.05), pytest.approx(after, rel=0.05))
    est = estimate(config, method, Setup(batch_size=2, max_length=12, precision="bf16", device="cpu", head=head))
    assert est.autocast_copies == trace[True]


def test_3b_lora_copies_drop_by_the_frozen_linears(llama3b):
    """Llama-3.2-3B, LoRA r=8 on q, v, bf16 autocast: weights drop by 2 B per frozen block-linear weight, and the
    autocast copies by those weights' bf16 copies (all but block 0's q, k, v, whose input needs no gradient); what
    is left is the tied LM head's copy and LoRA's A (not block 0's: its input needs no gradient either) and B."""
    c = llama3b
    C, F, kv, L, V, r = c.hidden_size, c.intermediate_size, c.num_kv_heads * c.head_dim, c.num_layers, c.vocab_size, 8
    qkv = C * C + 2 * C * kv
    block = qkv + C * C + 3 * C * F  # q, k, v, o, gate, up, down: no biases
    method, setup = Method("lora"), Setup(precision="bf16")
    e = estimate(c, method, setup)
    assert model_facts(c, "causal-lm", method).compute_dtype_elements == L * block
    assert e.weights == estimate(c, method, Setup()).weights - 2 * L * block
    uncast = trace_activations(c, method, Batch(1, 512), "causal-lm", autocast=True, frozen_cast=False)
    assert uncast.weight_copies - e.autocast_copies == 2 * (L * block - qkv)
    lora_a, lora_b = r * C + r * C, C * r + kv * r  # on q (C → C) and v (C → kv)
    assert e.autocast_copies == 2 * (V * C + L * lora_b + (L - 1) * lora_a)


def test_ddp_casts_and_fsdp_does_not(llama3b):
    """Under DDP the recipe casts before wrapping (weights as one GPU's); under FSDP its policy gathers in bf16:
    the shards stay fp32 and autocast copies nothing, as before."""
    method, one = Method("lora"), Setup(precision="bf16")
    single = estimate(llama3b, method, one)
    ddp = estimate(llama3b, method, Setup(precision="bf16", gpus=2, shard="ddp"))
    assert (ddp.weights, ddp.autocast_copies) == (single.weights, single.autocast_copies)
    fsdp = estimate(llama3b, method, Setup(precision="bf16", gpus=2, shard="fsdp"))
    fp32 = estimate(llama3b, method, Setup(precision="fp32", gpus=2, shard="fsdp"))
    assert fsdp.autocast_copies == 0 and fsdp.weights == fp32.weights > single.weights / 2


def test_a_4bit_base_is_not_counted_twice():
    """QLoRA with an untied LM head: the NF4 layers are no nn.Linear (their codes count once, as buffers); the frozen
    fp32 LM head is cast like any frozen linear. The estimate equals the real model's parameters + NF4 buffers."""
    config, head, method = kit.model_config("llama"), "causal-lm", Method.of("lora", r=4)
    setup = Setup(batch_size=2, max_length=12, precision="bf16", device="cpu", head=head, quantize="nf4")
    model = build_random_model(config, method, head, torch.device("cpu"), torch.float32, setup.nf4, "bf16")
    codes = sum(b.numel() * b.element_size() for m in nf4_layers(model).values() for b in m.buffers())
    assert codes > 0 and model.lm_head.weight.dtype == torch.bfloat16  # cast; LoRA's A / B train, fp32
    facts = model_facts(config, head, method, setup.nf4)
    assert facts.compute_dtype_elements == config.vocab_size * config.hidden_size
    assert estimate(config, method, setup).weights == _param_bytes(model) + codes


def test_precision_auto_is_the_default_and_minift_train_vocabulary(monkeypatch, capsys):
    """--precision auto (the default, as minift.train's) resolves for --device: bf16 for a bf16-capable GPU, the
    CPU's own answer for cpu; both commands take the same names."""
    choices = next(a.choices for a in build_parser()._actions if a.dest == "precision")
    assert tuple(choices) == tuple(CHOICES["precision"])
    assert build_parser().get_default("precision") == "auto"

    def run(*argv):
        assert main(["--model", "gpt2", "--method", "lora", "--max-length", "64", "--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)["setup"]["precision"]

    cuda = resolve("auto", "cuda") if torch.cuda.is_available() else "bf16"
    assert run() == run("--precision", "auto") == cuda
    for forced, expected in (("0", "fp32"), ("1", "bf16")):
        monkeypatch.setenv("MINIFT_CPU_BF16", forced)
        assert run("--device", "cpu") == resolve("auto", "cpu") == expected
    assert run("--precision", "fp32") == "fp32"
