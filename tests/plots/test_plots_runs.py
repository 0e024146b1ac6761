"""Run folders as data: reading records (validation loss under either name, or none), epoch ends, finding runs at
any depth, grouping by config minus the seed, mean ± std over seeds. No matplotlib needed."""
import json
import math

import pytest
from plotkit import write_grid, write_run

from minift.plots.runs import NoRuns, find_runs, group_runs, label, read_run, varying_keys


@pytest.mark.parametrize("key", ["val_loss", "loss"])
def test_validation_loss_is_read_under_either_name(tmp_path, key):
    run = read_run(write_run(tmp_path / "r", val_loss_key=key))
    steps, values = run.curve("val_loss")
    assert steps == [60, 120, 180] and len(values) == 3
    assert "loss" not in run.metric_names() and "val_loss" not in run.metric_names()
    assert run.metric_names() == ["accuracy", "micro_f1", "macro_f1"]
    assert run.main_metric == "accuracy"


def test_runs_without_val_loss_or_evaluations(tmp_path):
    run = read_run(write_run(tmp_path / "a", val_loss_key=None))
    assert run.curve("val_loss") == ([], [])
    bare = read_run(write_run(tmp_path / "b", evals=False, summary=False))
    assert bare.evals == [] and bare.metric_names() == [] and bare.main_metric is None
    assert bare.curve("train_loss")[0][:2] == [10, 20] and len(bare.curve("lr")[1]) == 18
    assert bare.test_value("accuracy") is None


def test_a_cut_off_last_line_is_skipped_and_a_bad_line_elsewhere_is_an_error(tmp_path):
    folder = write_run(tmp_path / "r", evals=False)
    path = folder / "metrics.jsonl"
    path.write_text(path.read_text() + '{"type": "train", "step": 19')  # killed while writing
    assert len(read_run(folder).train) == 18
    path.write_text('{"type": "tr\n' + path.read_text())
    with pytest.raises(ValueError, match="metrics.jsonl, line 1: not a JSON record"):
        read_run(folder)


def test_runs_without_config_or_summary_are_named_by_folder(tmp_path):
    for name in ("a", "b"):
        write_run(tmp_path / name, summary=False)
        (tmp_path / name / "config.json").unlink()
    groups = group_runs([read_run(p) for p in find_runs(tmp_path)])
    assert varying_keys(groups) == ["run"] and [label(g.key, ["run"]) for g in groups] == ["a", "b"]


def test_epoch_ends_from_evaluations_or_from_the_logged_epoch(tmp_path):
    assert read_run(write_run(tmp_path / "a", eval_every=30)).epoch_ends() == [60, 120]  # 180 is the end
    # no evaluations: where the logged epoch number goes up (log_every 25 does not divide 60: the next log)
    assert read_run(write_run(tmp_path / "b", evals=False, log_every=25)).epoch_ends() == [75, 125]
    assert read_run(write_run(tmp_path / "c", epochs=1)).epoch_ends() == []


def test_title_says_task_method_model_seed(tmp_path):
    run = read_run(write_run(tmp_path / "r", task="cola", method="bitfit", seed=7))
    assert run.title == "cola · bitfit · roberta-base · seed 7"
    (tmp_path / "r" / "summary.json").unlink()
    (tmp_path / "r" / "config.json").unlink()
    assert read_run(tmp_path / "r").title == "r"  # nothing known but the folder


def test_find_runs_at_any_depth_skipping_checkpoints(tmp_path):
    grid = write_grid(tmp_path / "sweep", tasks=("sst2",), methods=("full", "lora"), seeds=(1, 2))
    (grid / "roberta-base-sst2-lora" / "seed-1" / "checkpoints" / "step-5").mkdir(parents=True)
    (grid / "results.md").write_text("| table |")
    runs = find_runs(grid)
    assert [p.relative_to(grid).as_posix() for p in runs] == [
        "roberta-base-sst2-full/seed-1", "roberta-base-sst2-full/seed-2",
        "roberta-base-sst2-lora/seed-1", "roberta-base-sst2-lora/seed-2"]
    assert find_runs(runs[0]) == [runs[0]]  # a run folder is its own only run
    (tmp_path / "empty").mkdir()
    assert find_runs(tmp_path / "empty") == []
    with pytest.raises(NoRuns, match="no such folder"):
        find_runs(tmp_path / "missing")
    with pytest.raises(NoRuns, match="metrics.jsonl"):
        read_run(tmp_path / "empty")


def test_groups_are_the_config_minus_the_seed(tmp_path):
    grid = write_grid(tmp_path / "g", tasks=("sst2", "cola"), methods=("full", "lora"), seeds=(1, 2, 3))
    groups = group_runs([read_run(p) for p in find_runs(grid)])
    assert len(groups) == 4 and all(len(g.runs) == 3 for g in groups)
    assert {(g.key["task"], g.key["method"]) for g in groups} == {(t, m) for t in ("sst2", "cola")
                                                                  for m in ("full", "lora")}
    # lr differs only because each method has its own default: it follows from the method, so it is no axis
    assert varying_keys(groups) == ["method", "task"]
    assert label(groups[0].key, ["method"]) in ("full", "lora")


def test_other_methods_options_do_not_split_a_group(tmp_path):
    for seed, rank in ((1, 8), (2, 16)):  # a full run's LoRA rank is not part of what it is
        folder = write_run(tmp_path / f"full-{seed}", method="full", seed=seed)
        config = json.loads((folder / "config.json").read_text())
        config["lora"]["r"] = rank
        (folder / "config.json").write_text(json.dumps(config))
    for seed, rank in ((1, 2), (2, 64)):
        folder = write_run(tmp_path / f"lora-{rank}", method="lora", seed=seed)
        config = json.loads((folder / "config.json").read_text())
        config["lora"]["r"] = rank
        (folder / "config.json").write_text(json.dumps(config))
    groups = group_runs([read_run(p) for p in find_runs(tmp_path)])
    assert [len(g.runs) for g in groups] == [2, 1, 1]
    assert varying_keys(groups) == ["method", "lora.r"]
    assert [label(g.key, ["method", "lora.r"]) for g in groups] == ["full", "lora r=2", "lora r=64"]


def test_mean_and_sample_std_over_seeds(tmp_path):
    grid = write_grid(tmp_path / "g", tasks=("sst2",), methods=("lora",), seeds=(1, 2, 3))
    (group,) = group_runs([read_run(p) for p in find_runs(grid)])
    values = group.values("accuracy")
    mean, std, n = group.mean_std("accuracy")
    assert n == 3 and mean == pytest.approx(sum(values) / 3)
    assert std == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 2))  # sample std (n - 1)
    (single,) = group_runs([group.runs[0]])
    assert single.mean_std("accuracy")[1:] == (0.0, 1)
    assert math.isnan(group.mean_std("f1")[0]) and group.mean_std("f1")[2] == 0
