"""Gradient accumulation equals one big batch: 4 micro-batches of 8 give the gradients of one batch of 32."""
import torch
from kit import collate, feature_rows

from minift.data.example import IGNORE_INDEX
from minift.train.recipe import Recipe
from minift.train.step import backward_window

SCALER_OFF = torch.amp.GradScaler("cpu", enabled=False)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def window_grads(model, rows, sizes, kind):
    """Gradients after backward_window over micro-batches of the given sizes."""
    model.zero_grad(set_to_none=True)
    chunks, start = [], 0
    for size in sizes:
        chunks.append((collate(rows[start:start + size]), True))
        start += size
    backward_window(model, chunks, kind, "fp32", torch.device("cpu"), SCALER_OFF)
    return grads(model)


def assert_grads_equal(a, b):
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=f"gradient of {name}")


def test_classification_4x8_equals_32_with_unequal_lengths(bert):
    model = bert().train()  # no dropout
    rows = feature_rows(32, [3, 7, 12, 5, 20, 9], "classification")
    assert_grads_equal(window_grads(model, rows, [8, 8, 8, 8], "classification"),
                       window_grads(model, rows, [32], "classification"))


def test_token_weighted_lm_loss_with_unequal_target_counts(llama):
    model = llama.train()
    rows = feature_rows(32, [4, 17, 9, 25, 6], "causal-lm")
    micro = window_grads(model, rows, [8, 8, 8, 8], "causal-lm")
    assert_grads_equal(micro, window_grads(model, rows, [32], "causal-lm"))
    # The per-micro-batch mean would differ here: the micro-batches hold different numbers of target tokens.
    counts = [int((collate(rows[i:i + 8])["labels"][:, 1:] != IGNORE_INDEX).sum()) for i in range(0, 32, 8)]
    assert len(set(counts)) > 1


def test_partial_last_window(llama):
    model = llama.train()
    rows = feature_rows(20, [4, 11, 7], "causal-lm")
    assert_grads_equal(window_grads(model, rows, [8, 8, 4], "causal-lm"),
                       window_grads(model, rows, [20], "causal-lm"))


def test_whole_run_with_accumulation_matches_big_batches(train_config):
    """The recipe with 4 × 8 and 1 × 32 (100 examples: a short last window of one micro-batch) ends with the same
    weights (SGD, so that equal gradients give equal updates). The token weighting of causal-LM windows is
    checked on backward_window above; the windows themselves do not depend on the task kind."""
    finals = []
    for batch_size, accum in ((8, 4), (32, 1)):
        config = train_config(f"b{batch_size}", n_train=100, dropout=0.0, batch_size=batch_size,
                            grad_accum=accum, group_by_length=False, eval_each_epoch=False, clip=0.0)
        recipe = Recipe(config)
        recipe.setup()
        recipe.optimizer = torch.optim.SGD(recipe.model.parameters(), lr=0.5)
        recipe.scheduler = torch.optim.lr_scheduler.LambdaLR(recipe.optimizer, lambda step: 1.0)
        state = recipe.train()
        assert state.step == 8 and state.stopped == ""
        finals.append({n: p.detach().clone() for n, p in recipe.model.named_parameters()})
    for name, value in finals[0].items():
        torch.testing.assert_close(value, finals[1][name], atol=1e-6, rtol=0, msg=name)
