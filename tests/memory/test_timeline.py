"""The estimator's *peak* against the CPU allocator's real curve (profiler memory events) of training steps.

``timeline.profile_training_cpu`` runs real steps of our models (one warm-up, one profiled) and replays every
allocation and free; the estimate (with the CPU's rules: ``Setup(device="cpu")``) must give the step's peak
within 5% and its steady state exactly, for every family and method and the main options.
"""
import pytest

from minift.memory.estimate import Setup
from minift.memory.timeline import profile_training_cpu
from minift.models.config import ModelConfig
from minift.peft.config import Method


def _config(model_type: str) -> ModelConfig:
    """Width 256 so that per-tensor overheads are small, 2 layers so the test stays fast."""
    fields = {"vocab_size": 2000, "hidden_size": 256, "num_layers": 2, "num_heads": 4, "intermediate_size": 688,
              "max_position_embeddings": 512}
    if model_type == "llama":
        fields.update(num_kv_heads=2, hidden_act="silu", attention_bias=True)
    if model_type == "gpt_neo":
        fields.update(attention_layers=["global", "local"], window_size=32)
    return ModelConfig(model_type=model_type, **fields)


def _check(model_type, name, **setup):
    options = {"size": 16} if name == "adapter" else {}
    prof = profile_training_cpu(_config(model_type), Method.of(name, **options),
                                Setup(batch_size=2, max_length=64, device="cpu", **setup))
    assert prof.measured["steady state after step 2"] == pytest.approx(
        prof.estimated["steady state after step 2"], rel=0.005)
    assert abs(prof.error("peak")) <= 5.0, (prof.measured, prof.estimated)
    return prof


@pytest.mark.parametrize("method", ["full", "lora", "adapter", "bitfit", "prompt"])
@pytest.mark.parametrize("model_type", ["bert", "roberta", "gpt2", "gpt_neo", "llama"])
def test_peak_matches_the_allocator(model_type, method):
    _check(model_type, method)


@pytest.mark.slow
@pytest.mark.parametrize("setup", [
    {"gradient_checkpointing": True}, {"attention": "eager"}, {"precision": "bf16"},
    {"precision": "bf16-pure", "optimizer": "sgd-momentum"}, {"optimizer": "adamw-foreach"}, {"grad_accum": 2},
    {"padded": True}], ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("model_type,method", [("llama", "full"), ("llama", "lora"), ("bert", "full")])
def test_peak_with_options(model_type, method, setup):
    _check(model_type, method, **setup)


def test_the_optimizer_step_and_steady_state_are_exact():
    prof = _check("gpt2", "full", optimizer="adamw-foreach")
    for phase in ("peak in optimizer step", "steady state after step 2"):
        assert prof.estimated[phase] == pytest.approx(prof.measured[phase], rel=0.005)


@pytest.mark.slow
@pytest.mark.parametrize("setup", [{"precision": "fp32"}, {"precision": "bf16", "gradient_checkpointing": True}],
                         ids=["fp32", "bf16-autocast-checkpointed"])
def test_real_smollm2_shape(smollm2_gguf, setup):
    """The real SmolLM2-135M shape (30 layers, 49k vocabulary, tied) with LoRA, random weights, on the CPU."""
    from minift.models.presets import resolve_model

    config, _ = resolve_model(str(smollm2_gguf))
    prof = profile_training_cpu(config, Method("lora"), Setup(batch_size=1, max_length=64, device="cpu", **setup))
    assert abs(prof.error("peak")) <= 5.0, (prof.measured, prof.estimated)
