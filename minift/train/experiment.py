"""``--seeds``: run the whole experiment once per seed and tabulate the mean and standard deviation of the task's
test metrics, as markdown and CSV (the table the course reports show)."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import statistics
from pathlib import Path

from minift.train import distributed
from minift.train.config import TrainConfig
from minift.train.recipe import train_one
from minift.train.runfolder import default_output_dir


def seed_table(summaries: list, metric_names: list) -> tuple:
    """(markdown, csv) of per-seed test metrics plus a ``mean ± std`` row (sample std over seeds; 0 for one seed).

    Args:
        summaries: the runs' summaries (``summary.json`` dicts, each with ``seed`` and ``test``).
        metric_names: the metrics to show, in order.
    """
    rows = [[str(s["seed"])] + [f"{s['test'][m]:.4f}" for m in metric_names] for s in summaries]
    means = [statistics.fmean(s["test"][m] for s in summaries) for m in metric_names]
    stds = [statistics.stdev([s["test"][m] for s in summaries]) if len(summaries) > 1 else 0.0 for m in metric_names]
    summary_row = ["mean ± std"] + [f"{m:.4f} ± {d:.4f}" for m, d in zip(means, stds)]
    header = ["seed", *metric_names]
    markdown = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(r) + " |" for r in [*rows, summary_row]]) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header + [f"{m}_std" for m in metric_names])
    for s in summaries:
        writer.writerow([s["seed"]] + [s["test"][m] for m in metric_names] + [""] * len(metric_names))
    writer.writerow(["mean"] + means + stds)
    return markdown, buffer.getvalue()


def run_seeds(config: TrainConfig, progress=None, console=None) -> dict:
    """Train once per seed of ``config.seeds`` into ``<output_dir>/seed-<s>/`` and write ``results.md`` /
    ``results.csv`` (and ``curves.png`` overlaying the seeds) into ``<output_dir>``.

    Returns:
        ``{"summaries": [...], "markdown": str, "csv": str, "output_dir": str}``.
    """
    out = Path(config.output_dir) if config.output_dir else default_output_dir(config)
    summaries = []
    for seed in config.seeds:
        run_config = dataclasses.replace(config, seed=seed, seeds=None, output_dir=str(out / f"seed-{seed}"),
                                         resume=None)
        summaries.append(train_one(run_config, progress))
        if console is not None:
            from minift.train.progress import summary_table

            console.print(summary_table(summaries[-1]))
    names = list(summaries[0]["test"])
    markdown, table_csv = seed_table(summaries, names)
    if not distributed.is_main():  # under torchrun process 0 writes the tables
        return {"summaries": summaries, "markdown": markdown, "csv": table_csv, "output_dir": str(out)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(f"{summaries[0]['task']} · {config.method} · seeds {config.seeds}\n\n{markdown}")
    (out / "results.csv").write_text(table_csv)
    if config.plot:
        from minift.plots import PlotUnavailable, plot_runs

        with contextlib.suppress(PlotUnavailable):  # the tables are the result; curves are a courtesy
            plot_runs([out / f"seed-{s}" for s in config.seeds], out / "curves.png",
                      labels=[f"seed {s}" for s in config.seeds])
    return {"summaries": summaries, "markdown": markdown, "csv": table_csv, "output_dir": str(out)}
