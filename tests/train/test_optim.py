"""Weight-decay groups by structure, and schedules equal to transformers' (the reference)."""
import pytest
import torch
from torch import nn
from transformers import optimization as hf

from minift.optim import build_optimizer, build_scheduler, param_groups


def _group_ids(model):
    decay, no_decay = {}, {}
    for group in param_groups(model, 0.1):
        target = decay if group["weight_decay"] else no_decay
        target.update({id(p): p for p in group["params"]})
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[i] for i in decay}, {names[i] for i in no_decay}


def test_bert_biases_and_layernorms_are_not_decayed(bert):
    model = bert()
    decay, no_decay = _group_ids(model)
    assert decay and no_decay and not decay & no_decay
    assert decay | no_decay == {n for n, _ in model.named_parameters()}
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay)
    assert all(n.endswith("weight") and "LayerNorm" not in n for n in decay)


def test_llama_rmsnorm_weights_are_not_decayed(llama):
    model = llama
    decay, no_decay = _group_ids(model)
    assert {n for n in no_decay} == {n for n in decay | no_decay if "norm" in n}


def test_structure_not_names():
    class Odd(nn.Module):  # a norm called "proj" and a linear called "LayerNorm": names must not matter
        def __init__(self):
            super().__init__()
            self.proj = nn.LayerNorm(4)
            self.LayerNorm = nn.Linear(4, 4)

    decay, no_decay = _group_ids(Odd())
    assert decay == {"LayerNorm.weight"} and no_decay == {"proj.weight", "proj.bias", "LayerNorm.bias"}


def test_frozen_parameters_are_left_out(bert):
    model = bert()
    for p in model.bert.parameters():
        p.requires_grad_(False)
    optimizer = build_optimizer(model, 1e-3, 0.01, (0.8, 0.9), 1e-6)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(params) == 2 and all(p.requires_grad for p in params)  # classifier weight and bias
    assert optimizer.defaults["betas"] == (0.8, 0.9) and optimizer.defaults["eps"] == 1e-6
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, 1e-3)


@pytest.mark.parametrize("schedule, reference", [
    ("linear", hf.get_linear_schedule_with_warmup), ("cosine", hf.get_cosine_schedule_with_warmup),
    ("constant", lambda opt, w, t: hf.get_constant_schedule_with_warmup(opt, w))])
@pytest.mark.parametrize("warmup, warmup_steps", [(0.1, 5), (7.0, 7), (0.0, 0)])
def test_schedules_match_transformers(schedule, reference, warmup, warmup_steps):
    total = 50
    ours_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    ours, ref = build_scheduler(ours_opt, schedule, warmup, total), reference(ref_opt, warmup_steps, total)
    for _ in range(total + 3):
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), abs=1e-12)
        ours_opt.step(), ref_opt.step()
        ours.step(), ref.step()
