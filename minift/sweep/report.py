"""A sweep's report files, from its cells as their folders show them (so they can be rewritten without training:
``python -m minift.sweep SWEEP.yaml --tables-only``):

```
<sweep folder>/
  <cell>/ ...        one minift.train run folder per cell (model=...__task=...__seed=...)
  sweep.json         the axes, what every cell shares, the tables' rows and columns, the cells
  cells.json         every cell: values, status (finished | failed | pending), error, counts, test metrics
  cells.csv          the same, one line per cell
  failed.json        the failed cells with their error and traceback
  results.md         the tables (markdown), results.csv (one line per group and metric), results.tex (booktabs)
  figures/           minift.plots.plot_folder: overlays and mean ± std bars (with matplotlib)
```
"""
from __future__ import annotations

from minift.data.example import lower_is_better
from minift.sweep.grid import SEED, Sweep
from minift.sweep.run import write_records
from minift.sweep.tables import build_tables, cells_csv, group_cells, to_csv, to_latex, to_markdown

RESULTS = ("results.md", "results.csv", "results.tex", "cells.csv")
BY = ("method", "model", "task")  # what minift.plots can compare


def write_report(sweep: Sweep, outcomes: list, figures: bool = True) -> dict:
    """Write the tables (and figures) of ``outcomes`` into the sweep's folder.

    Returns:
        ``{"markdown": str, "files": [paths], "figures_note": str}``.
    """
    out = sweep.output_dir
    out.mkdir(parents=True, exist_ok=True)
    rows, cols = sweep.table_axes
    groups = group_cells(outcomes, sweep.axes)
    tables = build_tables(groups, sweep.axes, rows, cols)
    markdown = to_markdown(tables, _heading(sweep, outcomes, rows, cols, groups))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        markdown += "\n### failed cells\n\n" + "".join(f"- `{o.cell.name}`: {o.error}\n" for o in failed)
    files = dict(zip(RESULTS, (markdown, to_csv(groups, sweep.axes), to_latex(tables, str(out)),
                               cells_csv(outcomes, sweep.axes))))
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    write_records(out, outcomes)
    note = _figures(sweep, rows, cols) if figures else ""
    return {"markdown": markdown, "files": [out / name for name in files], "figures_note": note}


def _heading(sweep: Sweep, outcomes: list, rows, cols, groups) -> str:
    done = sum(o.status == "finished" for o in outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    seeds = sweep.axes.get(SEED)
    over = f"mean ± std over seeds {', '.join(map(str, seeds))}" if seeds and len(seeds) > 1 else "one seed"
    lower = sorted({m for g in groups for m in g.metrics if lower_is_better(m)})
    direction = "higher is better" + (f"; lower for {', '.join(lower)}" if lower else "")
    counted = f"{len(outcomes)} cells: {done} finished, {failed} failed, {len(outcomes) - done - failed} not run."
    if not any(g.metrics for g in groups):  # a --dry-run sweep
        return (f"# Sweep {sweep.output_dir}\n\n{counted} No test metrics (a --dry-run sweep, or no run has "
                f"finished): trainable parameters and their % of all; rows: {rows or 'all'}, columns: {cols}.")
    return (f"# Sweep {sweep.output_dir}\n\n{counted} Test metrics, {over}; rows: {rows or 'all'}, columns: "
            f"{cols}. Trainable parameters and their % of all beside each row. Best mean per column in bold "
            f"({direction}).")


def _figures(sweep: Sweep, rows, cols) -> str:
    """``minift.plots.plot_folder`` over the cells (a note when matplotlib or runs are missing)."""
    from minift.plots import NoRuns, PlotUnavailable, plot_folder

    by = next((a for a in (rows, cols) if a in BY), None)
    try:
        written = plot_folder(sweep.output_dir, sweep.output_dir / "figures", by=by)
    except (NoRuns, PlotUnavailable, ValueError) as err:
        return f"no figures: {err}"
    return f"{len(written)} figures in {sweep.output_dir / 'figures'}"
