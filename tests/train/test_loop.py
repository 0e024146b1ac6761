"""The loop's behaviour on tiny real models: exact resume, fp16 overflow skipping, NaN stop, early stopping."""
import json

import pytest
import torch
from safetensors.torch import load_file
from trainkit import collate, random_batch, tiny_bert

from minift.train.batching import BatchPlan
from minift.train.checkpoint import CheckpointLoadError, find_checkpoint, load_checkpoint
from minift.train.loop import LoopSettings, LoopState, fit
from minift.train.optim import build_optimizer, build_scheduler

ROWS = random_batch(60, [3, 9, 14, 6, 11], "classification")


def setup(tmp_path, dropout=0.1, epochs=2, precision="fp32", init_scale=2.0 ** 16, **settings):
    torch.manual_seed(1)
    model = tiny_bert(tmp_path, dropout=dropout).train()
    plan = BatchPlan([len(r["input_ids"]) for r in ROWS], lambda idx: collate([ROWS[i] for i in idx]), 8, seed=5)
    total = -(-len(plan) // 2) * epochs
    optimizer = build_optimizer(model, 1e-3, 0.01)
    scheduler = build_scheduler(optimizer, "linear", 0.1, total)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16", init_scale=init_scale)
    loop = LoopSettings(kind="classification", epochs=epochs, grad_accum=2, precision=precision,
                        device=torch.device("cpu"), clip=1.0, log_every=1, **settings)
    return model, optimizer, scheduler, scaler, plan, loop


def accuracy_eval(model):
    """A real validation metric on the training rows (changes as the model trains)."""
    def evaluate():
        model.eval()
        with torch.no_grad():
            batch = collate(ROWS)
            predictions = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).argmax(-1)
        model.train()
        return {"accuracy": (predictions == batch["labels"]).float().mean().item()}
    return evaluate


def run(tmp_path, name, state=None, resume=False, **kwargs):
    model, optimizer, scheduler, scaler, plan, loop = setup(tmp_path, checkpoint_dir=str(tmp_path / name),
                                                            eval_every=3, **kwargs)
    if resume:
        state = LoopState(**load_checkpoint(tmp_path / name, model, optimizer, scheduler, None))
    state = fit(model, optimizer, scheduler, scaler, plan, loop, accuracy_eval(model), lambda: None,
                lambda record: None, state)
    return model, state


def test_resume_after_an_evaluation_is_bit_identical(tmp_path):
    """Stop right after the evaluation at step 6 (mid-epoch), resume in a fresh model: same weights as one run."""
    full_model, full_state = run(tmp_path, "full")
    _, stopped = run(tmp_path, "split", max_steps=6)
    assert stopped.stopped == "max_steps" and find_checkpoint(tmp_path / "split").name == "step-6"
    assert 0 < stopped.micro < 8  # the stop is in the middle of an epoch: the data position matters
    torch.manual_seed(123)  # a different global RNG state: the checkpoint must restore the dropout stream
    resumed_model, resumed_state = run(tmp_path, "split", resume=True)
    assert resumed_state.step == full_state.step == 8
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [e["accuracy"] for e in resumed_state.history] == [e["accuracy"] for e in full_state.history]


def test_fp16_overflow_skips_the_step_and_recovers(tmp_path):
    """A huge initial loss scale overflows fp16 gradients: those steps are skipped (weights untouched), the scale
    backs off, and training then proceeds."""
    model, optimizer, scheduler, scaler, plan, loop = setup(tmp_path, dropout=0.0, precision="fp16",
                                                            init_scale=2.0 ** 40, max_steps=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = fit(model, optimizer, scheduler, scaler, plan, loop, dict, lambda: None, lambda r: None)
    assert state.skipped_steps == 1 and scaler.get_scale() == 2.0 ** 39
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())

    model, optimizer, scheduler, scaler, plan, loop = setup(tmp_path, dropout=0.0, precision="fp16",
                                                            init_scale=2.0 ** 40, epochs=6)
    records = []
    state = fit(model, optimizer, scheduler, scaler, plan, loop, dict, lambda: None, records.append)
    assert 0 < state.skipped_steps < state.step
    assert scaler.get_scale() == 2.0 ** 40 * 0.5 ** state.skipped_steps  # one back-off per skipped step
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert losses[-1] < losses[0]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model, optimizer, scheduler, scaler, plan, loop = setup(tmp_path, checkpoint_dir=str(tmp_path / "ck"),
                                                            eval_every=2)
    calls = [0]

    def poison(module, args, output):  # from the 9th training micro-batch (step 5 of 2 × 4) on, NaN logits
        calls[0] += module.training
        return output * float("nan") if calls[0] >= 9 and module.training else output

    model.classifier.register_forward_hook(poison)
    state = fit(model, optimizer, scheduler, scaler, plan, loop, accuracy_eval(model), lambda: None, lambda r: None)
    assert state.stopped == "nan" and state.step == 5
    last = find_checkpoint(tmp_path / "ck")
    assert last.name == "step-4"
    assert json.loads((last / "state.json").read_text())["loop"]["step"] == 4
    assert all(torch.isfinite(t).all() for t in load_file(last / "trainable.safetensors").values())


def test_early_stopping_and_best_tracking(tmp_path):
    model, optimizer, scheduler, scaler, plan, loop = setup(tmp_path, eval_every=1, early_stopping=2, epochs=3)
    values = iter([0.5, 0.7, 0.6, 0.7, 0.9])  # improves twice, then fails to beat 0.7 twice: stop at step 4
    best_calls = []
    state = fit(model, optimizer, scheduler, scaler, plan, loop, lambda: {"accuracy": next(values)},
                lambda: best_calls.append(1), lambda r: None)
    assert state.stopped == "early_stopping" and state.step == 4
    assert state.best_metric == 0.7 and state.best_step == 2 and len(best_calls) == 2


def _saved_loop(folder) -> dict:
    return json.loads((find_checkpoint(folder) / "state.json").read_text())["loop"]


def test_resuming_a_run_that_stopped_at_max_steps_does_no_extra_step(tmp_path):
    model, stopped = run(tmp_path, "done", max_steps=6)
    assert stopped.stopped == "max_steps" and _saved_loop(tmp_path / "done")["stopped"] == "max_steps"
    again_model, again = run(tmp_path, "done", resume=True, max_steps=6)
    assert again.step == 6 and again.stopped == "max_steps"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again_model.state_dict().values()))
    _, raised = run(tmp_path, "done", resume=True, max_steps=7)  # a raised limit trains on
    assert raised.step == 7 and raised.stopped == "max_steps"


def test_resuming_an_early_stopped_run_stays_stopped(tmp_path):
    model, optimizer, scheduler, scaler, plan, loop = setup(tmp_path, checkpoint_dir=str(tmp_path / "ck"),
                                                            eval_every=1, early_stopping=1)
    values = iter([0.5, 0.4])
    state = fit(model, optimizer, scheduler, scaler, plan, loop, lambda: {"accuracy": next(values)}, lambda: None,
                lambda r: None)
    assert state.stopped == "early_stopping" and state.step == 2
    assert _saved_loop(tmp_path / "ck")["stopped"] == "early_stopping"
    model, optimizer, scheduler, scaler, plan, loop = setup(tmp_path / "again", checkpoint_dir=str(tmp_path / "ck"),
                                                            eval_every=1, early_stopping=1)
    resumed = LoopState(**load_checkpoint(tmp_path / "ck", model, optimizer, scheduler, None))
    resumed = fit(model, optimizer, scheduler, scaler, plan, loop, lambda: {"accuracy": 1.0}, lambda: None,
                  lambda r: None, resumed)
    assert resumed.step == 2 and resumed.stopped == "early_stopping"


class CountingPlan:
    """A BatchPlan that fails the test instead of hanging when the loop keeps asking for epochs."""

    def __init__(self, plan):
        self.plan, self.calls = plan, 0

    def __len__(self):
        return len(self.plan)

    def collate(self, idx):
        return self.plan.collate(idx)

    def epoch(self, epoch):
        self.calls += 1
        assert self.calls < 5, "the loop spins without training"
        return self.plan.epoch(epoch)


def test_a_position_past_the_end_of_the_epoch_is_an_error(tmp_path):
    """A checkpoint from a run with fewer, larger batches has a micro-batch position this data does not reach."""
    model, optimizer, scheduler, scaler, plan, loop = setup(tmp_path)
    with pytest.raises(CheckpointLoadError, match="past this epoch's 8 micro-batches"):
        fit(model, optimizer, scheduler, scaler, CountingPlan(plan), loop, dict, lambda: None, lambda r: None,
            LoopState(step=3, micro=len(plan)))


def test_a_nan_metric_never_becomes_the_best(tmp_path):
    """Pearson's r of constant predictions is NaN: it must not be kept as the best (nothing would beat it)."""
    model, optimizer, scheduler, scaler, plan, loop = setup(tmp_path, eval_every=1, max_steps=5)
    values = iter([float("nan"), 0.5, 0.4, float("nan"), 0.6])
    best_steps, state = [], LoopState()
    state = fit(model, optimizer, scheduler, scaler, plan, loop, lambda: {"accuracy": next(values)},
                lambda: best_steps.append(state.step), lambda r: None, state)
    assert state.best_metric == 0.6 and state.best_step == 5 and best_steps == [2, 5]

    model, optimizer, scheduler, scaler, plan, loop = setup(tmp_path, eval_every=1, early_stopping=2)
    values = iter([0.5, float("nan"), float("nan"), 0.9])  # NaN counts as not improved
    state = fit(model, optimizer, scheduler, scaler, plan, loop, lambda: {"accuracy": next(values)}, lambda: None,
                lambda r: None)
    assert state.stopped == "early_stopping" and state.step == 3 and state.best_metric == 0.5
