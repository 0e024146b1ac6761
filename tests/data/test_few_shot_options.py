"""``--few-shot-k`` / ``--few-shot-seed``: the size and the seed of an ``_fs`` task's training sample (the course's
16 per class, seed 42, by default); refused for other tasks."""
from collections import Counter

import pytest

from minift.data.errors import DataError
from minift.data.tasks import load_task


def _ids(task) -> list:
    return [(ex.text, ex.label) for ex in task.splits["train"]]


def test_k_and_seed(shared_data):
    default = load_task("agnews_fs", shared_data)
    same = load_task("agnews_fs", shared_data, few_shot_k=16, few_shot_seed=42)
    assert _ids(default) == _ids(same) and len(default.splits["train"]) == 64
    four = load_task("agnews_fs", shared_data, few_shot_k=4, few_shot_seed=1)
    assert Counter(ex.label for ex in four.splits["train"]) == {0: 4, 1: 4, 2: 4, 3: 4}
    other = load_task("agnews_fs", shared_data, few_shot_k=4, few_shot_seed=2)
    assert _ids(four) != _ids(other)
    assert "4 train examples per class (seed 1)" in four.description
    assert four.splits["test"] == default.splits["test"]


def test_refused_elsewhere(shared_data):
    with pytest.raises(DataError, match="--few-shot-k: options of the few-shot tasks"):
        load_task("agnews", shared_data, few_shot_k=8)
    with pytest.raises(DataError, match="--few-shot-k must be a positive number"):
        load_task("agnews_fs", shared_data, few_shot_k=0)


def test_flags_reach_the_task(shared_data):
    from minift.train.build import build_task
    from minift.train.flags import resolve_config

    config = resolve_config(["--task", "acl_fs", "--data-dir", str(shared_data), "--few-shot-k", "2",
                             "--few-shot-seed", "7"])
    task = build_task(config)
    assert len(task.splits["train"]) == 2 * task.num_labels
