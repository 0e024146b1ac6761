"""The figures, as ``matplotlib.figure.Figure`` objects (``report.py`` writes them to files).

- :func:`run_figure`: one run — training and validation loss, validation metrics and the learning rate against
  optimizer steps, epochs marked, titled ``task · method · model · seed``.
- :func:`overlay_figure`: several series (methods, models or seeds; each the mean of its runs with a ±1 std band)
  on one axis per panel.
- :func:`bar_figure`: mean ± std over seeds of a test metric per category and series, with error bars and values.

Every figure is one column wide, in the style of ``style.py``, with its legend below the axes.
"""
from __future__ import annotations

import math
import statistics

from minift.plots.runs import Run
from minift.plots.style import legend_below, new_figure, series_style, style

STEP_LABEL = "optimizer step"
EPOCH_LINE = {"color": "0.55", "linestyle": ":", "linewidth": 0.7, "zorder": 0, "gid": "epoch"}


def _step_axis(ax) -> None:
    from matplotlib.ticker import EngFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 1500 → 1.5k: short tick labels that never collide
    ax.set_xlabel(STEP_LABEL)
    ax.set_xlim(left=0)


def _mark_epochs(axes: list, ends: list, last_step: float) -> None:
    """Dotted lines at the epoch ends on every panel, and the epoch numbers on a top axis of the first panel."""
    if not ends:
        return
    for ax in axes:
        for step in ends:
            ax.axvline(step, **EPOCH_LINE)
    bounds = [0, *ends, last_step]
    middles = [(a + b) / 2 for a, b in zip(bounds, bounds[1:])]
    every = max(1, math.ceil(len(middles) / 8))  # at most 8 labels across a column
    top = axes[0].secondary_xaxis("top")
    top.set_xticks(middles[::every], [str(i + 1) for i in range(0, len(middles), every)])
    top.tick_params(length=0, pad=1.5, labelsize="small")
    top.spines["top"].set_visible(False)
    top.set_xlabel("epoch", labelpad=2, fontsize="small")


def smooth(values: list, points: int = 40) -> list:
    """A centred moving average leaving about ``points`` independent points (values unchanged when there are fewer):
    a loss logged thousands of times is a band of noise at column width; its trend is what a reader needs."""
    half = len(values) // (2 * points)
    if half < 1:
        return list(values)
    sums = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        out.append((sums[hi] - sums[lo]) / (hi - lo))
    return out


def _is_score(values: list) -> bool:
    """A metric that fits the [-1, 1] score axis (a NaN, e.g. Pearson's r of constant predictions, is no reason
    to move it)."""
    return all(-1.0 <= v <= 1.0 for v in values if math.isfinite(v))


def run_figure(run: Run):
    """One run's curves: loss (training, and validation when logged), validation metrics, learning rate.

    Metrics in [-1, 1] (accuracy, F1, MCC, Pearson's r) share one panel; any other (MSE) gets its own. Panels with
    nothing logged are left out (a run without evaluations has no metrics panel).
    """
    metrics = [(m, run.curve(m)) for m in run.metric_names()]
    scores = [(m, c) for m, c in metrics if c[1] and _is_score(c[1])]
    others = [(m, c) for m, c in metrics if c[1] and not _is_score(c[1])]
    losses = [(name, run.curve(key)) for name, key in (("training loss", "train_loss"),
                                                       ("validation loss", "val_loss"))]
    losses = [(n, c) for n, c in losses if c[0]]
    lr = run.curve("lr")
    panels = [p for p in (("loss", losses), ("validation metric", scores)) if p[1]]
    panels += [(f"validation {m}", [(m, c)]) for m, c in others]
    panels += [("learning rate", [("learning rate", lr)])] if lr[0] else []
    with style():
        fig, axes = new_figure(max(1, len(panels)))
        handles, labels, index = [], [], 0
        for ax, (ylabel, curves) in zip(axes, panels):
            for name, (steps, values) in curves:
                look = series_style(index)
                if ylabel == "learning rate":
                    ax.plot(steps, values, color="0.25")
                    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
                    continue
                sparse = name != "training loss"  # evaluations are few: show each point
                if not sparse and smooth(values) != values:  # the raw noise faintly, the trend on top
                    ax.plot(steps, values, color=look["color"], alpha=0.25, linewidth=0.6, gid="raw")
                    values = smooth(values)
                (line,) = ax.plot(steps, values, color=look["color"], linestyle=look["linestyle"],
                                  marker=look["marker"] if sparse else None, label=name)
                handles.append(line)
                labels.append(name)
                index += 1
            ax.set_ylabel(ylabel)
        for ax in axes:
            _step_axis(ax)
            ax.label_outer()  # only the bottom panel keeps its step ticks and label
        if not panels:
            axes[0].text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=axes[0].transAxes)
        last = max([r["step"] for r in run.train + run.evals], default=0)
        _mark_epochs(axes, run.epoch_ends(), last)
        fig.suptitle(run.title)
        legend_below(fig, handles, labels)
    return fig


def _mean_curve(runs: list, name: str) -> tuple:
    """(steps, means, stds) of a series over runs, at every step any run logged (each step's mean is over the runs
    that reached it, so a seed that stopped early does not end the curve)."""
    by_step = {}
    for run in runs:
        for step, value in zip(*run.curve(name)):
            if math.isfinite(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    means = [statistics.fmean(by_step[s]) for s in steps]
    stds = [statistics.stdev(by_step[s]) if len(by_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, stds


def _look(index: int, name: str, palette: list | None) -> dict:
    """The series style of ``name``: by its place in ``palette`` (all the series of a folder, so a method keeps its
    colour in every figure), else by ``index``."""
    return series_style(palette.index(name) if palette and name in palette else index)


def overlay_figure(series: list, metric: str | None = None, title: str | None = None, palette: list | None = None):
    """Several series on one axis per panel: training loss, validation loss (when any run logged it) and a
    validation metric, each series the mean over its runs with a ±1 std band.

    Args:
        series: ``(label, runs)`` pairs; a label per method, model or seed.
        metric: the validation metric to show (default: each series' main metric).
        title: the figure title.
        palette: every series label of the folder, in order: fixes each label's colour across figures.
    """
    metrics = [metric or next((r.main_metric for r in runs if r.main_metric), None) for _, runs in series]
    same_metric = len(set(metrics)) == 1
    panels = [("training loss", lambda i: "train_loss")]
    if any(r.curve("val_loss")[0] for _, runs in series for r in runs):
        panels.append(("validation loss", lambda i: "val_loss"))
    if any(metrics):
        panels.append((f"validation {metrics[0]}" if same_metric else "validation main metric",
                       lambda i: metrics[i]))
    with style():
        fig, axes = new_figure(len(panels))
        handles, labels = [], []
        for i, (name, runs) in enumerate(series):
            look = _look(i, name, palette)
            for ax, (ylabel, key) in zip(axes, panels):
                steps, means, stds = _mean_curve(runs, key(i)) if key(i) else ([], [], [])
                sparse = key(i) != "train_loss"
                if not sparse:  # many series: the trends only
                    means, stds = smooth(means), smooth(stds)
                (line,) = ax.plot(steps, means, color=look["color"], linestyle=look["linestyle"],
                                  marker=look["marker"] if sparse else None)
                if any(stds):
                    ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                    color=look["color"], alpha=0.18, linewidth=0)
                ax.set_ylabel(ylabel)
            handles.append(line)
            labels.append(name if same_metric or not metrics[i] else f"{name} ({metrics[i]})")
        for ax in axes:
            _step_axis(ax)
            ax.label_outer()
        all_runs = [r for _, runs in series for r in runs]
        ends = {tuple(r.epoch_ends()) for r in all_runs}
        if len(ends) == 1:  # epochs are marked only when every run has the same ones
            _mark_epochs(axes, list(ends.pop()), max([r["step"] for r in all_runs[0].train] or [0]))
        if title:
            fig.suptitle(title)
        legend_below(fig, handles, labels)
    return fig


def _value_text(mean: float) -> str:
    return f"{mean:.3f}" if abs(mean) < 10 else f"{mean:.3g}"


def bar_figure(categories: list, series: list, cells: dict, ylabel: str, title: str | None = None,
               palette: list | None = None, legend: list | None = None):
    """Grouped bars of mean ± std over seeds, with the mean written on each bar.

    Args:
        categories: x-axis groups (e.g. tasks); ``[""]`` for a single unlabelled group.
        series: bars within each group (e.g. methods), one colour each, in the legend when more than one.
        cells: ``{(category index, series index): (mean, std, n)}``; a missing cell is an empty slot.
        ylabel: the y-axis label (the metric).
        title: the figure title.
        palette: every series label of the folder, in order: fixes each label's colour across figures.
        legend: the legend's text for each series (default: the series labels).
    """
    bars = len(categories) * len(series)
    width = (0.8 if len(series) > 1 else 0.6) / len(series)
    rotate = bars > 8  # vertical value labels once the bars get narrow
    with style():
        fig, (ax,) = new_figure(1, height=2.3 if len(series) > 1 else 2.0, sharex=False)
        handles = []
        for j, name in enumerate(series):
            look = _look(j, name, palette)
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(categories))]
            present = [(x, cells[i, j]) for i, x in enumerate(xs) if (i, j) in cells and math.isfinite(cells[i, j][0])]
            if not present:
                continue
            x, stat = zip(*present)
            means, stds = [s[0] for s in stat], [s[1] if s[2] > 1 else 0.0 for s in stat]
            text = legend[j] if legend else name
            container = ax.bar(x, means, width * 0.92, yerr=stds, color=look["color"], label=text,
                               error_kw={"elinewidth": 0.7, "capsize": 1.8 if rotate else 2.5, "capthick": 0.7})
            handles.append(container)
            for xi, mean, std in zip(x, means, stds):
                up = mean >= 0
                ax.annotate(_value_text(mean), (xi, mean + (std if up else -std)), xytext=(0, 2 if up else -2),
                            textcoords="offset points", ha="center", va="bottom" if up else "top",
                            rotation=90 if rotate else 0, fontsize=6 if rotate else 6.5)
        ax.axhline(0, color="0.3", linewidth=0.6)
        ax.set_xticks(range(len(categories)), categories)
        ax.tick_params(axis="x", length=0)
        ax.grid(axis="x", visible=False)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.22 if rotate else 0.12)  # room for the value labels above the error bars
        if title:
            ax.set_title(title)
        if len(series) > 1:
            legend_below(fig, handles, [c.get_label() for c in handles])
    return fig
