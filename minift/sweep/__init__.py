"""minift.sweep: a grid of training runs as one command, resumable, to the reports' tables and figures.

``python -m minift.sweep SWEEP.yaml`` (or ``--grid 'model=A,B task=x,y seed=42,13'``) runs every cell of the grid
in this process, one after another, through ``minift.train.recipe.train_one``, each into its own run folder under
the sweep's folder, and writes the tables (markdown, CSV, LaTeX) and figures there. See ``grid.py`` (the sweep file
and axes), ``run.py`` (running and resuming), ``tables.py`` (the tables) and ``report.py`` (the files).

- ``load_sweep(path, grid, flags, ...)`` → ``Sweep``; ``Sweep.cells()`` → ``Cell`` (name, values, TrainConfig);
- ``run_sweep(sweep)`` → an ``Outcome`` per cell; ``write_report(sweep, outcomes)`` → the files.
"""
from minift.sweep.grid import Cell, Sweep, SweepError, load_sweep
from minift.sweep.report import write_report
from minift.sweep.run import Outcome, outcome_of, run_sweep

__all__ = ["Cell", "Outcome", "Sweep", "SweepError", "load_sweep", "outcome_of", "run_sweep", "write_report"]
