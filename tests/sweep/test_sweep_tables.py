"""The sweep's tables from cells' summaries (made up here, no training): mean ± std over seeds, 4 decimals, the best
of each column bold (lower is better for mse), parameters beside the rows, markdown / LaTeX (booktabs) / CSV."""
import csv
import io
import statistics

import pytest

from minift.sweep.grid import load_sweep
from minift.sweep.run import Outcome
from minift.sweep.tables import build_tables, cells_csv, decimals, group_cells, to_csv, to_latex, to_markdown

SCORES = {  # (model, task) → test main metric per seed
    ("roberta-base", "cola"): [0.60, 0.62, 0.58], ("roberta-base", "stsb"): [0.90, 0.91, 0.89],
    ("bert-base", "cola"): [0.55, 0.57, 0.56], ("bert-base", "stsb"): [0.88, 0.87, 0.89],
}
TRAINABLE = {("roberta-base", "cola"): 124_647_170, ("roberta-base", "stsb"): 124_646_401,
             ("bert-base", "cola"): 109_483_778, ("bert-base", "stsb"): 109_483_009}


def _outcomes(tmp_path, drop=()):
    sweep = load_sweep(None, ["model=roberta-base,bert-base task=cola,stsb seed=1,2,3"],
                       {"output_dir": str(tmp_path)})
    outcomes = []
    for cell in sweep.cells():
        key, seed = (cell.values["model"], cell.values["task"]), cell.values["seed"]
        if (key, seed) in drop:
            outcomes.append(Outcome(cell, "failed", None, "boom"))
            continue
        value = SCORES[key][seed - 1]
        test = {"mcc": value, "accuracy": value + 0.2} if key[1] == "cola" else \
            {"pearson": value, "spearman": value - 0.01, "mse": 1 - value}
        summary = {"main_metric": "mcc" if key[1] == "cola" else "pearson", "test": test,
                   "trainable_params": TRAINABLE[key], "all_params": TRAINABLE[key]}
        outcomes.append(Outcome(cell, "finished", summary))
    return sweep, outcomes


def test_model_by_task_table(tmp_path):
    sweep, outcomes = _outcomes(tmp_path)
    tables = build_tables(group_cells(outcomes, sweep.axes), sweep.axes, *sweep.table_axes)
    main = to_markdown(tables[:1])
    mean, std = statistics.fmean(SCORES["roberta-base", "cola"]), statistics.stdev(SCORES["roberta-base", "cola"])
    assert "| model | trainable | % | cola (mcc) | stsb (pearson) |" in main
    assert f"| roberta-base | 124,646,401–124,647,170 | 100.00 | **{mean:.4f} ± {std:.4f}** | **0.9000 ± 0.0100** |" \
        in main
    assert "| bert-base | 109,483,009–109,483,778 | 100.00 | 0.5600 ± 0.0100 | 0.8800 ± 0.0100 |" in main
    titles = [t.title for t in tables]
    assert titles == ["test main metric", "test accuracy", "test spearman", "test mse",
                      "trainable parameters (% of all)"]  # mcc / pearson are the main table; counts vary by task
    mse = to_markdown([tables[3]])
    assert "| roberta-base | 124,646,401–124,647,170 | 100.00 | — | **0.1000 ± 0.0100** |" in mse  # lower is better


def test_fewer_seeds_are_said_and_failed_cells_left_out(tmp_path):
    sweep, outcomes = _outcomes(tmp_path, drop={(("bert-base", "stsb"), 2)})
    tables = build_tables(group_cells(outcomes, sweep.axes), sweep.axes, *sweep.table_axes)
    assert "0.8850 ± 0.0071 (n=2)" in to_markdown(tables[:1])


def test_latex_is_booktabs_with_bold_best(tmp_path):
    sweep, outcomes = _outcomes(tmp_path)
    latex = to_latex(build_tables(group_cells(outcomes, sweep.axes), sweep.axes, "model", "task"))
    assert latex.count(r"\toprule") == latex.count(r"\bottomrule") == latex.count(r"\midrule") == 5
    assert r"model & trainable & \% & cola (mcc) & stsb (pearson) \\" in latex
    assert r"\textbf{0.6000 $\pm$ 0.0200}" in latex and r"124,646,401--124,647,170" in latex
    assert r"\begin{tabular}{lrrrr}" in latex
    flipped = to_latex(build_tables(group_cells(outcomes, sweep.axes), sweep.axes, "task", "model")[:1])
    assert r"task & trainable & \% & roberta-base (main metric) & bert-base (main metric) \\" in flipped
    assert r"\textbf" not in flipped  # a column of mcc and pearson values has no best


def test_metric_columns(tmp_path):
    sweep, outcomes = _outcomes(tmp_path)
    tables = build_tables(group_cells(outcomes, sweep.axes), sweep.axes, "model", "metric")
    assert [t.title for t in tables] == ["task=cola · test metrics", "task=stsb · test metrics"]
    assert tables[0].columns == ["mcc", "accuracy"]


def test_csv(tmp_path):
    sweep, outcomes = _outcomes(tmp_path)
    rows = list(csv.DictReader(io.StringIO(to_csv(group_cells(outcomes, sweep.axes), sweep.axes))))
    first = rows[0]
    assert (first["model"], first["task"], first["metric"], first["n"], first["main"]) == \
        ("roberta-base", "cola", "mcc", "3", "1")
    assert float(first["mean"]) == pytest.approx(0.6) and float(first["std"]) == pytest.approx(0.02)
    assert first["trainable_params"] == "124647170"
    cells = list(csv.DictReader(io.StringIO(cells_csv(outcomes, sweep.axes))))
    assert len(cells) == 12 and cells[0]["status"] == "finished" and cells[0]["mcc"] == "0.6"


def test_decimals():
    assert decimals([0.5, 0.01]) == 4 and decimals([1234.5]) == 1 and decimals([123.4]) == 2
    assert decimals([0.00012]) is None


def test_method_options_join_the_methods_row(tmp_path):
    """With the methods as rows, LoRA's rank is part of the row's name (lora r=8), not a section or a column."""
    sweep = load_sweep(None, ["task=cola method=full,lora lora_r=2,8 seed=1,2"], {"output_dir": str(tmp_path)})
    assert sweep.table_axes == ("task", "method")
    sweep = load_sweep(None, ["task=cola method=full,lora lora_r=2,8 seed=1,2"], {"output_dir": str(tmp_path)},
                       rows="method", cols="task")
    outcomes = [Outcome(c, "finished", {"main_metric": "mcc", "test": {"mcc": 0.1 * c.values["seed"]},
                                        "trainable_params": 10 * len(c.name), "all_params": 1000})
                for c in sweep.cells()]
    tables = build_tables(group_cells(outcomes, sweep.axes), sweep.axes, "method", "task")
    assert [row[0] for row in tables[0].rows] == ["full", "lora r=2", "lora r=8"]
    assert tables[0].columns == ["cola (mcc)"]
