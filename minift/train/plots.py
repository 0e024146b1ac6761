"""Moved to minift.plots; this re-export goes once minift.train imports from there."""
from minift.plots import PlotUnavailable, plot_run, plot_runs  # noqa: F401
