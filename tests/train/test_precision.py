"""Mixed and pure low precision: bf16 autocast and bf16 weights train on CPU; fp16/bf16 on CUDA (marked)."""
import pytest
import torch
from trainkit import collate, random_batch, tiny_bert

from minift.train.batching import BatchPlan
from minift.train.loop import LoopSettings, fit
from minift.train.optim import build_optimizer, build_scheduler

ROWS = random_batch(48, [4, 9, 13], "classification")


def train(tmp_path, precision, device):
    model = tiny_bert(tmp_path).to(device)
    if precision == "bf16-pure":
        model = model.to(torch.bfloat16)
    plan = BatchPlan([len(r["input_ids"]) for r in ROWS], lambda idx: collate([ROWS[i] for i in idx]), 8, seed=1)
    optimizer = build_optimizer(model, 3e-3, 0.0)
    scheduler = build_scheduler(optimizer, "constant", 0.0, 60)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    records = []
    settings = LoopSettings(kind="classification", epochs=10, grad_accum=1, precision=precision, device=device,
                            clip=1.0, log_every=6, eval_each_epoch=False)
    state = fit(model.train(), optimizer, scheduler, scaler, plan, settings, dict, lambda: None, records.append)
    losses = [r["loss"] for r in records]
    return model, state, losses


@pytest.mark.parametrize("precision", ["bf16", "bf16-pure"])
def test_bf16_trains_on_cpu(tmp_path, precision):
    model, state, losses = train(tmp_path, precision, torch.device("cpu"))
    assert state.step == 60 and losses[-1] < 0.5 * losses[0]
    expected = torch.bfloat16 if precision == "bf16-pure" else torch.float32
    assert all(p.dtype == expected for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "bf16-pure"])
def test_precisions_train_on_cuda(tmp_path, precision):
    _, state, losses = train(tmp_path, precision, torch.device("cuda"))
    assert state.step == 60 and losses[-1] < 0.5 * losses[0]
    assert state.skipped_steps <= 2  # fp16: at most the first steps while the scale settles
