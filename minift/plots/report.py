"""Figures from run folders to files: one run's curves, overlays of runs, and a whole folder of runs (a ``--seeds``
folder or a sweep) grouped by config minus the seed into overlays and bar charts."""
from __future__ import annotations

import re
from pathlib import Path

from minift.plots.figures import bar_figure, overlay_figure, run_figure
from minift.plots.runs import (
    MAIN_AXES,
    TITLE_ORDER,
    NoRuns,
    find_runs,
    group_runs,
    label,
    read_run,
    short_name,
    varying_keys,
)
from minift.plots.style import PlotUnavailable, require_matplotlib, save

BY_CHOICES = MAIN_AXES


def plot_run(run: str | Path, missing_ok: bool = False, output: str | Path | None = None,
             fmt: str = "png") -> Path | None:
    """One run's curves, to ``output`` (default ``<run>/curves.png``).

    Args:
        run: a run folder.
        missing_ok: return None instead of raising :class:`PlotUnavailable` when matplotlib is absent (what
            training does: the curves are a bonus there).
        output: the file to write; its suffix follows ``fmt``.
        fmt: ``png`` (300 dpi) or ``pdf``.
    Returns:
        The file written, or None.
    """
    try:
        require_matplotlib()
    except PlotUnavailable:
        if missing_ok:
            return None
        raise
    return save(run_figure(read_run(run)), output or Path(run) / "curves.png", fmt)


def plot_runs(runs: list, output: str | Path, labels: list | None = None, metric: str | None = None,
              title: str | None = None) -> Path:
    """Overlay the curves of several run folders (one series each) in one figure.

    Args:
        runs: run folders.
        output: the file to write (``.png`` or ``.pdf``).
        labels: legend labels (default: each folder's name).
        metric: the validation metric to show (default: the main metric).
        title: the figure title.
    Returns:
        The file written.
    """
    require_matplotlib()
    loaded = [read_run(run) for run in runs]
    labels = labels or [Path(run).name for run in runs]
    return save(overlay_figure([(name, [run]) for name, run in zip(labels, loaded)], metric, title), output)


def _slug(parts: dict) -> str:
    text = "-".join(f"{short_name(k, v)}" for k, v in parts.items())
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")


def _facets(groups: list, names: list) -> list:
    """(facet values, groups in it) for every combination of the settings ``names`` that has groups."""
    if not names:
        return [({}, groups)]
    out = {}
    for group in groups:
        out.setdefault(tuple(repr(group.key.get(n)) for n in names), ({n: group.key.get(n) for n in names}, []))
        out[tuple(repr(group.key.get(n)) for n in names)][1].append(group)
    return list(out.values())


def _metric_of(group, metric: str | None) -> str | None:
    return metric or group.runs[0].main_metric


def _bars(groups: list, series_names: list, category: str | None, metric: str | None, title: str, palette: list):
    """A bar figure: categories = values of ``category`` (or the series, when there is none), bars = series. When
    the groups' main metrics differ (tasks), each category or legend entry says which metric it shows."""
    metrics = {_metric_of(g, metric) for g in groups}
    ylabel = f"test {next(iter(metrics))}" if len(metrics) == 1 else "test main metric"

    def named(text: str, members: list, sep: str = "\n") -> str:
        names = {_metric_of(g, metric) for g in members}
        return f"{text}{sep}({names.pop()})" if len(metrics) > 1 and len(names) == 1 else text

    if category is None:  # only the series vary: one bar each, named on the x axis
        cells = {(i, 0): g.mean_std(_metric_of(g, metric)) for i, g in enumerate(groups)}
        return bar_figure([named(label(g.key, series_names), [g]) for g in groups], [""], cells, ylabel, title)
    series = list(dict.fromkeys(label(g.key, series_names) for g in groups))
    values = list(dict.fromkeys(repr(g.key.get(category)) for g in groups))
    members = [[g for g in groups if repr(g.key.get(category)) == v] for v in values]
    categories = [named(short_name(category, m[0].key.get(category)), m) for m in members]
    legend = None
    if len(metrics) > 1 and all(c == short_name(category, m[0].key.get(category)) for c, m in zip(categories, members)):
        legend = [named(s, [g for g in groups if label(g.key, series_names) == s], " ") for s in series]
    cells = {(values.index(repr(g.key.get(category))), series.index(label(g.key, series_names))):
             g.mean_std(_metric_of(g, metric)) for g in groups}
    return bar_figure(categories, series, cells, ylabel, title, palette, legend)


def _title(parts: list, note: str) -> str:
    """``a · b · note``, the note on a second line when one line would not fit a column."""
    head = " · ".join(parts)
    if not head:
        return note
    return f"{head} · {note}" if len(head) + len(note) <= 46 else f"{head}\n{note}"


def _seed_counts(groups: list) -> str:
    counts = sorted({len(g.runs) for g in groups})
    if counts == [1]:
        return "1 seed"
    return f"mean ± std over {'-'.join(map(str, (counts[0], counts[-1]) if counts[1:] else counts))} seeds"


def _single_group(group, out: Path, metric: str | None, fmt: str) -> list:
    """A ``--seeds`` folder: the seeds overlaid, and every test metric as a bar of mean ± std."""
    runs = sorted(group.runs, key=lambda r: (r.get("seed") is None, r.get("seed") or 0, str(r.path)))
    title = runs[0].title.rsplit(" · seed", 1)[0]
    series = [(f"seed {r.get('seed')}" if r.get("seed") is not None else r.path.name, [r]) for r in runs]
    written = [save(overlay_figure(series, metric, title), out / "overlay-seeds.png", fmt)]
    names = [metric] if metric else list(runs[0].summary.get("test", {}))
    if names:
        cells = {(i, 0): group.mean_std(name) for i, name in enumerate(names)}
        figure = bar_figure(names, [""], cells, "test score", _title([title], _seed_counts([group])))
        written.append(save(figure, out / "bars-test.png", fmt))
    return written


def plot_folder(folders: str | Path | list, out: str | Path | None = None, metric: str | None = None,
                by: str | None = None, fmt: str = "png") -> list:
    """Every figure of a run folder or a folder of runs.

    A run folder gets its curves (``curves.<fmt>``). A folder of runs is grouped by config minus the seed; then
    ``by`` (``method``, ``model`` or ``task``; default: the first of these that varies) names what is compared:
    one overlay per combination of the other settings (``overlay-*``), and bar charts of the test metric's mean
    ± std over seeds with the other main setting (the task, if it varies) on the x axis (``bars-*``). A folder
    with one group (``--seeds``) gets the seeds overlaid and each test metric as a bar.

    Args:
        folders: one folder or several (their runs are pooled).
        out: where to write (default: the run folder itself, or ``<folder>/figures``).
        metric: the validation/test metric to show (default: each task's main metric).
        by: the comparison axis.
        fmt: ``png`` (300 dpi) or ``pdf``.
    Returns:
        The files written.
    Raises:
        NoRuns: no run folder in ``folders``; PlotUnavailable: no matplotlib; ValueError: a bad ``by``/``metric``.
    """
    folders = [Path(f) for f in (folders if isinstance(folders, (list, tuple)) else [folders])]
    if by is not None and by not in BY_CHOICES:
        raise ValueError(f"--by must be one of {', '.join(BY_CHOICES)}, got {by!r}")
    paths = [p for f in folders for p in find_runs(f)]
    if not paths:
        raise NoRuns(f"no run folders in {', '.join(map(str, folders))}: a run folder holds metrics.jsonl "
                     "(written by python -m minift.train; a --seeds or sweep folder holds run folders)")
    require_matplotlib()
    runs = [read_run(p) for p in paths]
    if metric and not any(metric in r.metric_names() or r.test_value(metric) is not None for r in runs):
        known = sorted({m for r in runs for m in r.metric_names() + list(r.summary.get("test", {}))})
        raise ValueError(f"metric {metric!r} is in none of the runs; they have: {', '.join(known) or 'no metrics'}")
    if len(folders) == 1 and paths == folders:
        return [plot_run(paths[0], output=Path(out or paths[0]) / "curves.png", fmt=fmt)]
    out = Path(out) if out else folders[0] / "figures"
    groups = group_runs(runs)
    varying = varying_keys(groups)
    if len(groups) == 1 or not varying:
        return _single_group(groups[0], out, metric, fmt) if len(groups) == 1 else \
            plot_runs([r.path for r in runs], out / "overlay.png", metric=metric)
    main = [k for k in varying if k in MAIN_AXES]
    by = by or (main[0] if main else None)
    if by is not None and by not in varying:
        raise ValueError(f"--by {by}: every run has the same {by}; what varies: {', '.join(varying)}")
    series_names = ([by] if by else []) + [k for k in varying if k not in MAIN_AXES]
    palette = list(dict.fromkeys(label(g.key, series_names) for g in groups))
    facet_names = [k for k in main if k != by]
    fixed = [short_name(k, groups[0].key.get(k)) for k in TITLE_ORDER if k not in varying and k in groups[0].key]
    written, seeds, suffix = [], _seed_counts(groups), f"-by-{by}" if by else ""
    for facet, members in _facets(groups, facet_names):
        series = [(label(g.key, series_names), g.runs) for g in members]
        title = _title([short_name(k, v) for k, v in facet.items()] + fixed, seeds)
        name = f"overlay{suffix}" + (f"-{_slug(facet)}" if facet else "")
        written.append(save(overlay_figure(series, metric, title, palette), out / f"{name}.png", fmt))
    category = "task" if "task" in facet_names else (facet_names[0] if facet_names else None)
    bar_facets = [k for k in facet_names if k != category]
    for facet, members in _facets(groups, bar_facets):
        title = _title([short_name(k, v) for k, v in facet.items()] + fixed, seeds)
        name = f"bars-{metric or 'main'}{suffix}" + (f"-{_slug(facet)}" if facet else "")
        figure = _bars(members, series_names, category, metric, title, palette)
        written.append(save(figure, out / f"{name}.png", fmt))
    return written
