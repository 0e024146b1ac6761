"""The sweep's grid: axes in every spelling minift.train reads, typed values, cells (another method's options left
out), each cell's config in minift.train's order of precedence, folder names. No training here."""
from pathlib import Path

import pytest
import yaml

from minift.sweep.grid import SweepError, axis_key, load_sweep, parse_grid, value_labels


@pytest.mark.parametrize("spelling", ["lora_r", "lora-r", "--lora-r", "lora.r", "lora.r "])
def test_axis_spellings(spelling):
    assert axis_key(spelling) == "lora.r"


def test_plain_and_odd_axes():
    assert axis_key("batch-size") == "batch_size"
    assert axis_key("adapter_reduction_factor") == "adapter.reduction_factor"
    assert axis_key("seeds") == "seed"
    with pytest.raises(SweepError, match="not a config key"):
        axis_key("learning_rate")
    with pytest.raises(SweepError, match="cannot be a grid axis"):
        axis_key("resume")


def test_grid_values_are_typed_as_the_flags_read_them():
    axes = parse_grid(["model=A,B lr=1e-3,3e-4 lora_targets=[query,value],[query]", "train_head=true,false"])
    assert axes == {"model": ["A", "B"], "lr": [1e-3, 3e-4], "lora.targets": [["query", "value"], ["query"]],
                    "train_head": [True, False]}
    with pytest.raises(SweepError, match="lora.r=two"):
        parse_grid(["lora_r=two"])
    with pytest.raises(SweepError, match="key=value"):
        parse_grid(["model"])


def test_cells_leave_out_another_methods_options(tmp_path):
    sweep = load_sweep(None, ["method=full,lora lora_r=2,8 seed=1,2"], {"task": "cola", "output_dir": str(tmp_path)})
    cells = sweep.cells()
    assert [c.name for c in cells] == ["method=full__seed=1", "method=full__seed=2",
                                       "method=lora__lora.r=2__seed=1", "method=lora__lora.r=2__seed=2",
                                       "method=lora__lora.r=8__seed=1", "method=lora__lora.r=8__seed=2"]
    config = cells[-1].config
    assert (config.method, config.lora.r, config.seed) == ("lora", 8, 2)
    assert Path(config.output_dir) == tmp_path / cells[-1].name


def test_precedence_task_yaml_then_file_then_flags_then_cell(tmp_path):
    """configs/cola.yaml says batch_size 32, max_length 64, epochs 3; the file overrides max_length and epochs, the
    command line epochs again; the grid gives lr."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"grid": {"lr": [1e-4, 2e-4]}, "task": "cola", "max_length": 48, "epochs": 5,
                                    "lora": {"r": 4}, "output_dir": str(tmp_path / "out")}))
    sweep = load_sweep(path, flags={"epochs": 7})
    config = sweep.cells()[1].config
    assert (config.batch_size, config.max_length, config.epochs, config.lr, config.lora.r) == (32, 48, 7, 2e-4, 4)
    assert sweep.output_dir == tmp_path / "out"


def test_sweep_checks(tmp_path):
    with pytest.raises(SweepError, match="also an axis"):
        load_sweep(None, ["seed=1,2"], {"seed": 3})
    with pytest.raises(SweepError, match="no axes"):
        load_sweep(None, [], {"task": "cola"})
    with pytest.raises(SweepError, match="--rows lr: not an axis"):
        load_sweep(None, ["seed=1,2 method=full,bitfit"], rows="lr")
    with pytest.raises(SweepError, match="seed is what the tables average"):
        load_sweep(None, ["seed=1,2 method=full,bitfit"], cols="seed")
    with pytest.raises(SweepError, match="not for a sweep"):
        load_sweep(None, ["seed=1,2"], {"resume": "x"})
    sweep = load_sweep(None, ["method=full,bitfit"], {"seeds": [1, 2, 3]})  # --seeds: the seed axis
    assert sweep.axes["seed"] == [1, 2, 3] and sweep.table_axes == ("method", "metric")
    with pytest.raises(SweepError, match="lora options"):
        load_sweep(None, ["lora_r=0,2"], {"method": "lora", "task": "cola"}).cells()


def test_a_file_grid_is_extended_and_replaced_by_grid_flags(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"grid": {"model": ["a", "b"], "seed": [1, 2]}, "rows": "model"}))
    sweep = load_sweep(path, ["seed=7 method=full,bitfit"])
    assert sweep.axes == {"model": ["a", "b"], "seed": [7], "method": ["full", "bitfit"]}
    assert sweep.table_axes == ("model", "method")


def test_labels_tell_values_apart(tmp_path):
    tasks = [f"file:{tmp_path / name / 'train.csv'},{tmp_path / name / 'test.csv'}" for name in ("sst", "cola")]
    for name in ("sst", "cola"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.csv").write_text("text,label\n")
    models = [str(tmp_path / "a" / "model"), str(tmp_path / "b" / "model")]
    for m in models:
        Path(m).mkdir(parents=True)
    labels = value_labels({"task": tasks, "model": models, "lora.targets": [["query", "value"]]})
    assert [labels["task", repr(t)] for t in tasks] == ["sst", "cola"]
    assert [labels["model", repr(m)] for m in models] == ["a/model", "b/model"]
    assert labels["lora.targets", repr(["query", "value"])] == "query+value"


@pytest.mark.parametrize("name, cells, axes", [("models-tasks", 45, ("model", "task")),
                                               ("methods-cola-stsb", 60, ("method", "task")),
                                               ("minilm-fewshot", 6, ("method", "metric"))])
def test_the_repos_sweep_files(name, cells, axes):
    sweep = load_sweep(Path(__file__).resolve().parents[2] / "configs" / "sweeps" / f"{name}.yaml")
    assert len(sweep.cells()) == cells and sweep.table_axes == axes
