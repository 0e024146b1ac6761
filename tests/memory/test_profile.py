"""The CUDA profiler against the estimate (runs only with a GPU), and its CPU-side pieces."""
import kit
import pytest
import torch

from minift.memory.estimate import Setup
from minift.memory.params import model_facts
from minift.memory.profile import build_random_model, make_optimizer, profile_training, random_batch, train_steps
from minift.models.config import ModelConfig
from minift.peft.config import Method


def _decoder() -> ModelConfig:
    """Big enough that allocator rounding and workspaces are noise, small enough for a quick test."""
    return ModelConfig(model_type="llama", vocab_size=32000, hidden_size=1024, num_layers=4, num_heads=16,
                       num_kv_heads=4, intermediate_size=2816, hidden_act="silu", tie_word_embeddings=False)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-pure"])
@pytest.mark.parametrize("name", ["full", "lora", "adapter", "bitfit", "prompt"])
def test_random_model_and_training_steps_on_cpu(name, precision):
    """The profiler's model has the counted parameters, and its steps train exactly the trainable ones."""
    config = kit.model_config("gpt2")
    method = Method.of(name, **kit.PEFT_OPTIONS.get(name, {}))
    pure = precision == "bf16-pure"
    setup = Setup(batch_size=2, max_length=16, precision=precision, device="cpu", optimizer="sgd" if pure else "adamw")
    model = build_random_model(config, method, "causal-lm", torch.device("cpu"),
                               torch.bfloat16 if pure else torch.float32)
    count = model_facts(config, "causal-lm", method).params
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == count.total
    assert sum(p.numel() for p in params.values() if p.requires_grad) == count.trainable
    before = {name: p.detach().clone() for name, p in params.items()}
    optimizer = make_optimizer(setup.optimizer, model, lr=1e-2)
    assert train_steps(model, optimizer, random_batch(config, "causal-lm", setup, torch.device("cpu")),
                       "causal-lm", setup, steps=2) == {}
    changed = {name for name, p in params.items() if not torch.equal(p.detach(), before[name])}
    trainable = {name for name, p in params.items() if p.requires_grad}
    assert changed <= trainable  # frozen weights are bit-identical
    if pure:  # a bf16 SGD step may round a small update away; most still move
        assert len(changed) >= len(trainable) / 2
    else:
        assert changed == trainable


def test_optimizer_choices():
    model = torch.nn.Linear(4, 4)
    assert make_optimizer("adamw", model).defaults["foreach"] is False
    assert make_optimizer("adamw-foreach", model).defaults["foreach"] is True
    assert make_optimizer("sgd-momentum", model).defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="what-if"):
        make_optimizer("adamw-8bit", model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_profile_needs_cuda():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        profile_training(_decoder(), Method("lora"), Setup(batch_size=2, max_length=128))


@pytest.mark.cuda
@pytest.mark.parametrize("name,precision", [("full", "fp32"), ("full", "bf16"), ("lora", "bf16-pure"),
                                            ("lora", "bf16"), ("prompt", "fp32")])
def test_estimate_within_5_percent_of_measured_peak(name, precision):
    prof = profile_training(_decoder(), Method(name), Setup(batch_size=4, max_length=512, precision=precision))
    assert prof.measured["weights loaded"] == pytest.approx(prof.estimated["weights loaded"], rel=0.01)
    assert abs(prof.error("peak")) <= 5.0, (prof.measured, prof.estimated)
