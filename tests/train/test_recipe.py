"""The recipe's loop on a tiny real run (a 2-layer BERT, a 64-example CSV task): exact resume, fp16 overflow
skipping, NaN stop, early stopping, best-weight tracking. Validation values are scripted by overriding
``Recipe.val_metrics`` where a test needs a given sequence."""
import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from minift.train.checkpoint import CheckpointLoadError, find_checkpoint
from minift.train.recipe import LoopState, Recipe, TrainingStopped


def make(train_config, name="run", values=None, **overrides):
    """A set-up recipe of ``train_config(name, **overrides)``; ``values``: the validation accuracies to report."""
    config = train_config(name, **overrides)
    recipe = Scripted(config, values) if values is not None else Recipe(config)
    recipe.setup()
    return recipe


class Scripted(Recipe):
    """A recipe whose validation reports given values, and which counts its best-weight saves."""

    def __init__(self, config, values):
        super().__init__(config)
        self.values, self.best_saves = iter(values), []

    def val_metrics(self) -> dict:
        return {"accuracy": next(self.values)}

    def save_best(self) -> None:
        self.best_saves.append(self.state.step)
        super().save_best()


def weights(recipe) -> dict:
    return {n: p.detach().clone() for n, p in recipe.model.named_parameters()}


def train_losses(recipe) -> list:
    lines = (recipe.out / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


def interrupt_at(recipe, step: int) -> None:
    """Ctrl-C (a real SIGINT to this process) during the last micro-batch of optimizer step ``step``."""
    calls = [0]

    def hook(module, args, output):
        calls[0] += module.training
        if module.training and calls[0] == step * recipe.config.grad_accum:
            os.kill(os.getpid(), signal.SIGINT)
        return output

    recipe.model.classifier.register_forward_hook(hook)


def test_ctrl_c_after_an_evaluation_then_resume_is_bit_identical(tmp_path, train_config):
    """Ctrl-C at step 6 (mid-epoch, right after an evaluation), resume in a fresh recipe: same weights and
    evaluations as one uninterrupted run."""
    straight = make(train_config, "straight", eval_every=3)
    straight.train()
    split = make(train_config, "split", eval_every=3)
    interrupt_at(split, 6)
    stopped = split.train()
    assert stopped.stopped == "interrupted" and stopped.step == 6
    assert find_checkpoint(tmp_path / "split").name == "step-6"
    assert 0 < stopped.micro < 8  # the stop is in the middle of an epoch: the data position matters
    with pytest.raises(TrainingStopped, match="--resume"):
        split.finish()
    torch.manual_seed(123)  # a different global RNG state: the checkpoint must restore the dropout stream
    resumed = make(train_config, "split", eval_every=3, resume=str(tmp_path / "split"))
    state = resumed.train()
    assert state.step == straight.state.step == 8 and state.stopped == ""
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [e["accuracy"] for e in state.history] == [e["accuracy"] for e in straight.state.history]


def test_fp16_overflow_skips_the_step_and_recovers(tmp_path, train_config):
    """A huge initial loss scale overflows fp16 gradients: those steps are skipped (weights untouched; counted
    from the optimizer's own step count), the scale backs off, and training then proceeds."""
    recipe = make(train_config, "one", dropout=0.0, precision="fp16", max_steps=1)
    recipe.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    before = weights(recipe)
    state = recipe.train()
    assert state.skipped_steps == 1 and recipe.scaler.get_scale() == 2.0 ** 39
    assert all(torch.equal(before[n], p) for n, p in recipe.model.named_parameters())

    recipe = make(train_config, "six", dropout=0.0, precision="fp16", epochs=6, eval_each_epoch=False)
    recipe.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    state = recipe.train()
    assert 0 < state.skipped_steps < state.step
    assert recipe.scaler.get_scale() == 2.0 ** 40 * 0.5 ** state.skipped_steps  # one back-off per skipped step
    assert any(not torch.equal(before[n], p) for n, p in recipe.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in recipe.model.parameters())
    losses = train_losses(recipe)
    assert losses[-1] < losses[0]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, train_config):
    recipe = make(train_config, eval_every=2)
    calls = [0]

    def poison(module, args, output):  # from the 9th training micro-batch (step 5 of 2 × 4) on, NaN logits
        calls[0] += module.training
        return output * float("nan") if calls[0] >= 9 and module.training else output

    recipe.model.classifier.register_forward_hook(poison)
    state = recipe.train()
    assert state.stopped == "nan" and state.step == 5
    last = find_checkpoint(tmp_path / "run")
    assert last.name == "step-4"
    assert json.loads((last / "state.json").read_text())["loop"]["step"] == 4
    assert all(torch.isfinite(t).all() for t in load_file(last / "trainable.safetensors").values())
    with pytest.raises(TrainingStopped, match="NaN"):
        recipe.finish()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stopped"] == "nan"


def test_early_stopping_and_best_tracking(tmp_path, train_config):
    # Improves twice, then fails to beat 0.7 twice: stop at step 4.
    recipe = make(train_config, values=[0.5, 0.7, 0.6, 0.7, 0.9], eval_every=1, early_stopping=2, epochs=3)
    state = recipe.train()
    assert state.stopped == "early_stopping" and state.step == 4
    assert state.best_metric == 0.7 and state.best_step == 2 and recipe.best_saves == [1, 2]
    assert (recipe.out / "best" / "config.json").is_file()  # full fine-tuning: an HF folder


def _saved_loop(folder) -> dict:
    return json.loads((find_checkpoint(folder) / "state.json").read_text())["loop"]


def test_resuming_a_run_that_stopped_at_max_steps_does_no_extra_step(tmp_path, train_config):
    done = make(train_config, "done", eval_every=3, max_steps=6)
    assert done.train().stopped == "max_steps" and _saved_loop(tmp_path / "done")["stopped"] == "max_steps"
    again = make(train_config, "done", eval_every=3, max_steps=6, resume=str(tmp_path / "done"))
    assert again.train().step == 6 and again.state.stopped == "max_steps"
    assert all(torch.equal(a, b) for a, b in zip(done.model.state_dict().values(), again.model.state_dict().values()))
    raised = make(train_config, "done", eval_every=3, max_steps=7, resume=str(tmp_path / "done"))  # trains on
    assert raised.train().step == 7 and raised.state.stopped == "max_steps"


def test_resuming_an_early_stopped_run_stays_stopped(tmp_path, train_config):
    recipe = make(train_config, values=[0.5, 0.4], eval_every=1, early_stopping=1)
    assert recipe.train().stopped == "early_stopping" and recipe.state.step == 2
    assert _saved_loop(tmp_path / "run")["stopped"] == "early_stopping"
    resumed = make(train_config, values=[1.0], eval_every=1, early_stopping=1, resume=str(tmp_path / "run"))
    assert resumed.train().step == 2 and resumed.state.stopped == "early_stopping"


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


def test_a_position_past_the_end_of_the_epoch_is_an_error(tmp_path, train_config):
    """A checkpoint from a run with fewer, larger batches has a micro-batch position this data does not reach."""
    recipe = make(train_config)
    recipe.plan = CountingPlan(recipe.plan)
    recipe.state = LoopState(step=3, micro=len(recipe.plan))
    with pytest.raises(CheckpointLoadError, match="past this epoch's 8 micro-batches"):
        recipe.train()


def test_a_nan_metric_never_becomes_the_best(tmp_path, train_config):
    """Pearson's r of constant predictions is NaN: it must not be kept as the best (nothing would beat it)."""
    recipe = make(train_config, "a", values=[math.nan, 0.5, 0.4, math.nan, 0.6], eval_every=1, max_steps=5)
    state = recipe.train()
    assert state.best_metric == 0.6 and state.best_step == 5 and recipe.best_saves == [2, 5]

    recipe = make(train_config, "b", values=[0.5, math.nan, math.nan, 0.9], eval_every=1, early_stopping=2)
    state = recipe.train()  # NaN counts as not improved
    assert state.stopped == "early_stopping" and state.step == 3 and state.best_metric == 0.5


def test_without_validation_the_final_weights_are_saved_once_and_tested(tmp_path, train_config):
    recipe = make(train_config, eval_each_epoch=False, epochs=1)
    recipe.train()
    assert recipe.state.history == [] and not (recipe.out / "best").exists()
    final = weights(recipe)
    summary = recipe.finish()
    assert summary["steps"] == 4 and summary["test_examples"] == 16 and "accuracy" in summary["test"]
    assert (recipe.out / "best" / "model.safetensors").is_file()
    assert all(torch.equal(final[n], p) for n, p in recipe.model.named_parameters())
