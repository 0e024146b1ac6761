"""Mixed and pure low precision through the recipe: bf16 autocast and bf16 weights train on CPU; every precision on
CUDA (marked)."""
import json

import pytest
import torch

from minift.train.recipe import Recipe


def train(train_config, precision, device):
    config = train_config(precision, n_train=48, dropout=0.0, precision=precision, device=device,
                        grad_accum=1, epochs=10, lr=3e-3, weight_decay=0.0, schedule="constant", warmup=0.0,
                        log_every=6, eval_each_epoch=False)
    recipe = Recipe(config)
    recipe.setup()
    state = recipe.train()
    lines = (recipe.out / "metrics.jsonl").read_text().splitlines()
    losses = [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]
    return recipe.model, state, losses


@pytest.mark.parametrize("precision", ["bf16", "bf16-pure"])
def test_bf16_trains_on_cpu(train_config, precision):
    model, state, losses = train(train_config, precision, "cpu")
    assert state.step == 60 and losses[-1] < 0.5 * losses[0]
    expected = torch.bfloat16 if precision == "bf16-pure" else torch.float32
    assert all(p.dtype == expected for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "bf16-pure"])
def test_precisions_train_on_cuda(train_config, precision):
    _, state, losses = train(train_config, precision, "cuda")
    assert state.step == 60 and losses[-1] < 0.5 * losses[0]
    assert state.skipped_steps <= 2  # fp16: at most the first steps while the scale settles
