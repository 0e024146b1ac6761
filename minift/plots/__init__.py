"""minift.plots: figures a student pastes into a report, drawn from run folders (``python -m minift.plots``).

- ``runs``: read a run folder (``read_run`` → ``Run``), find the run folders under a folder (``find_runs``), group
  them by config minus the seed (``group_runs`` → ``Group`` with ``mean_std(metric)``).
- ``figures``: ``run_figure`` (loss, validation metrics, learning rate against steps, epochs marked),
  ``overlay_figure`` (series on one axis per panel, mean ± std band), ``bar_figure`` (mean ± std over seeds).
- ``report``: to files — ``plot_run``, ``plot_runs``, ``plot_folder`` (a ``--seeds`` folder or a sweep).
- ``style``: the one style (column width, Okabe–Ito palette, 300 dpi PNG or PDF); ``PlotUnavailable``.

matplotlib is an optional extra: ``pip install 'minift[plot]'``. Importing this package does not import it.
"""
from minift.plots.report import plot_folder, plot_run, plot_runs
from minift.plots.runs import Group, NoRuns, Run, find_runs, group_runs, read_run
from minift.plots.style import PlotUnavailable

__all__ = ["Group", "NoRuns", "PlotUnavailable", "Run", "find_runs", "group_runs", "plot_folder", "plot_run",
           "plot_runs", "read_run"]
