"""The reports' tables from a sweep's cells: any two axes as rows × columns, mean ± std over seeds of every test
metric, the trainable parameters and their share beside each row; as markdown, CSV and LaTeX (booktabs).

The cells are grouped by every axis but ``seed``. Axes other than the rows and the columns make sections (one set
of tables per combination, e.g. per method). With columns = an axis (``--cols task``) there is one table of each
column's main metric (``cola (mcc)``) and one per other metric; with ``--cols metric``, one table with a column per
metric. Numbers have 4 decimals (fewer for large values, scientific notation for tiny ones), std the same as its
mean; the best mean of each column is bold (higher is better, lower for losses and errors) when a column compares
two rows or more. A cell averaged over fewer seeds than the grid has says ``(n=K)``; an empty one is ``—``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from dataclasses import dataclass, field

from minift.data.example import lower_is_better
from minift.sweep.grid import SEED

EMPTY = "—"
METHOD = "method"


@dataclass
class Group:
    """The cells that differ only by seed."""

    values: dict  # axis → value (the seed left out; None where the axis does not apply, e.g. full's LoRA rank)
    main_metric: str | None = None
    metrics: dict = field(default_factory=dict)  # test metric → the seeds' values (finite ones)
    trainable: list = field(default_factory=list)  # the cells' trainable parameter counts
    percent: list = field(default_factory=list)  # ... and their share of all parameters, in percent
    all_params: list = field(default_factory=list)
    cells: int = 0  # cells in the group
    finished: int = 0  # of which finished

    def stat(self, metric: str) -> tuple | None:
        """(mean, sample std, n) of a test metric over the seeds, or None without values."""
        values = self.metrics.get(metric) or []
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def group_cells(outcomes: list, axes: dict) -> list:
    """The ``Group`` of every combination of the non-seed axes, in grid order, from the cells' outcomes."""
    groups: dict = {}
    for outcome in outcomes:
        values = {a: outcome.cell.values.get(a) for a in axes if a != SEED}
        group = groups.setdefault(repr(values), Group(values))
        group.cells += 1
        summary = outcome.summary or {}
        if outcome.status != "finished":
            continue
        group.finished += 1
        group.main_metric = group.main_metric or summary.get("main_metric")
        for name, value in (summary.get("test") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                group.metrics.setdefault(name, []).append(float(value))
        if "trainable_params" in summary:
            group.trainable.append(summary["trainable_params"])
            group.all_params.append(summary.get("all_params"))
            group.percent.append(summary.get("trainable_percent")
                                 or 100 * summary["trainable_params"] / summary["all_params"])
    return list(groups.values())


# --- numbers -------------------------------------------------------------------------------------------------------

def decimals(values: list) -> int | None:
    """Decimals for a column's numbers: 4, fewer for large values; None: scientific notation (tiny values)."""
    biggest = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    if biggest >= 1000:
        return 1
    if biggest >= 100:
        return 2
    if 0 < biggest < 1e-3:
        return None
    return 4


def number(value: float, places: int | None) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2e}" if places is None else f"{value:.{places}f}"


def count(values: list) -> str:
    """``124,647,170``, or the range ``a–b`` when the cells differ (e.g. heads of different sizes)."""
    values = sorted(set(values))
    if not values:
        return EMPTY
    return f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}–{values[-1]:,}"


def percent(values: list) -> str:
    def one(p: float) -> str:
        return f"{p:.2f}" if p >= 1 else f"{p:.4f}"

    values = sorted({round(v, 6) for v in values if v is not None})
    if not values:
        return EMPTY
    return one(values[0]) if len(values) == 1 else f"{one(values[0])}–{one(values[-1])}"


# --- tables --------------------------------------------------------------------------------------------------------

@dataclass
class Table:
    """One rows × columns table, ready to render."""

    title: str
    corner: str  # the rows axis' name (top-left header)
    columns: list  # column headers
    rows: list  # (row label, trainable, percent, [Cell text parts per column])
    best: set = field(default_factory=set)  # (row index, column index) of each column's best mean
    params: bool = True  # show the trainable and % columns


def label(labels: dict, axis: str | None, value) -> str:
    """A row label: the value's label (``labels``: ``grid.value_labels`` of the sweep's axes)."""
    if axis is None:
        return "all"
    if value is None:
        return EMPTY
    return labels.get((axis, repr(value))) or str(value)


def column_label(labels: dict, axis: str, value) -> str:
    """A column header: the value, named ``axis=value`` unless the axis is a model, task or method."""
    text = label(labels, axis, value)
    return text if axis in ("model", "task", "method") or value is None else f"{axis}={text}"


def _ordered(groups: list, axis: str | None) -> list:
    seen: dict = {}
    for g in groups:
        seen.setdefault(repr(g.values.get(axis) if axis else None), g.values.get(axis) if axis else None)
    return list(seen.values())


def _stat_text(stat: tuple | None, places: int | None, expected: int) -> str:
    if stat is None:
        return EMPTY
    mean, std, n = stat
    text = number(mean, places) if expected == 1 or n == 1 else f"{number(mean, places)} ± {number(std, places)}"
    return text + (f" (n={n})" if n < expected else "")


def _best(stats: dict, metric_of: dict) -> set:
    """(i, j) of the best mean per column j among two or more rows with values."""
    best = set()
    for j in {j for _, j in stats}:
        if metric_of[j] is None:  # the column mixes metrics (e.g. rows are tasks): nothing to compare
            continue
        column = {i: s[0] for (i, jj), s in stats.items() if jj == j and s is not None and math.isfinite(s[0])}
        if len(column) < 2:
            continue
        pick = min if lower_is_better(metric_of[j]) else max
        target = pick(column.values())
        best |= {(i, j) for i, v in column.items() if v == target}
    return best


def metric_table(groups: list, rows: str | None, cols: str, metric: str | None, expected: int, title: str,
                 labels: dict) -> Table:
    """Rows × columns (an axis) of one metric; ``metric`` None: each cell's main metric."""
    row_values, col_values = _ordered(groups, rows), _ordered(groups, cols)
    at = {(repr(g.values.get(rows) if rows else None), repr(g.values.get(cols))): g for g in groups}
    stats, metric_of, columns = {}, {}, []
    for j, cv in enumerate(col_values):
        members = [g for (r, c), g in at.items() if c == repr(cv)]
        mains = {g.main_metric for g in members if g.main_metric}
        name = metric or (mains.pop() if len(mains) == 1 else "main metric")
        metric_of[j] = None if name == "main metric" else name
        header = column_label(labels, cols, cv)
        columns.append(f"{header} ({name})" if metric is None else header)
        for i, rv in enumerate(row_values):
            g = at.get((repr(rv), repr(cv)))
            stats[i, j] = g.stat(metric or g.main_metric) if g is not None and (metric or g.main_metric) else None
    places = {j: decimals([s[0] for (_, jj), s in stats.items() if jj == j and s] +
                          [s[1] for (_, jj), s in stats.items() if jj == j and s]) for j in range(len(col_values))}
    body = []
    for i, rv in enumerate(row_values):
        members = [g for (r, _), g in at.items() if r == repr(rv)]
        body.append((label(labels, rows, rv), count([t for g in members for t in g.trainable]),
                     percent([p for g in members for p in g.percent]),
                     [_stat_text(stats[i, j], places[j], expected) for j in range(len(col_values))]))
    return Table(title, rows or "", columns, body, _best(stats, metric_of))


def metrics_table(groups: list, rows: str | None, expected: int, title: str, labels: dict) -> Table:
    """Rows × every test metric (``--cols metric``)."""
    row_values = _ordered(groups, rows)
    names = list(dict.fromkeys(m for g in groups for m in ([g.main_metric] if g.main_metric else []) + list(g.metrics)
                               if any(g.stat(m) for g in groups)))
    stats, body = {}, []
    for i, rv in enumerate(row_values):
        members = [g for g in groups if (g.values.get(rows) if rows else None) == rv]
        for j, name in enumerate(names):
            found = [g.stat(name) for g in members if g.stat(name) is not None]
            stats[i, j] = found[0] if len(found) == 1 else None
    places = {j: decimals([s[0] for (_, jj), s in stats.items() if jj == j and s]) for j in range(len(names))}
    for i, rv in enumerate(row_values):
        members = [g for g in groups if (g.values.get(rows) if rows else None) == rv]
        body.append((label(labels, rows, rv), count([t for g in members for t in g.trainable]),
                     percent([p for g in members for p in g.percent]),
                     [_stat_text(stats[i, j], places[j], expected) for j in range(len(names))]))
    return Table(title, rows or "", names, body, _best(stats, dict(enumerate(names))))


def params_table(groups: list, rows: str | None, cols: str, title: str, labels: dict) -> Table:
    """Trainable parameters (and % of all) per cell, where they differ along a row."""
    row_values, col_values = _ordered(groups, rows), _ordered(groups, cols)
    body = []
    for rv in row_values:
        texts = []
        for cv in col_values:
            members = [g for g in groups if (g.values.get(rows) if rows else None) == rv and g.values.get(cols) == cv]
            trained = [t for g in members for t in g.trainable]
            texts.append(f"{count(trained)} ({percent([p for g in members for p in g.percent])}%)" if trained
                         else EMPTY)
        body.append((label(labels, rows, rv), "", "", texts))
    return Table(title, rows or "", [column_label(labels, cols, cv) for cv in col_values], body, params=False)


def build_tables(groups: list, axes: dict, rows: str | None, cols: str, labels: dict | None = None) -> list:
    """Every table of the sweep (see the module docstring), section by section; ``labels``: how values read
    (``grid.value_labels(axes)`` by default)."""
    from minift.sweep.grid import value_labels

    labels = dict(value_labels(axes) if labels is None else labels)
    expected = len(axes.get(SEED, [None]))
    if METHOD in (rows, cols):
        groups, axes = fold_method_options(groups, axes, labels, (rows, cols))
    sections = [a for a in axes if a not in (SEED, rows, cols)]
    out = []
    for values, members in _sections(groups, sections):
        prefix = ", ".join(f"{a}={label(labels, a, v)}" for a, v in values.items())

        def titled(text: str, prefix: str = prefix) -> str:
            return f"{prefix} · {text}" if prefix else text

        tested = any(g.metrics for g in members)  # a --dry-run sweep has counts only
        if cols == "metric":
            out.append(metrics_table(members, rows, expected, titled("test metrics" if tested else "parameters"),
                                     labels))
            continue
        if tested:
            out.append(metric_table(members, rows, cols, None, expected, titled("test main metric"), labels))
        names = list(dict.fromkeys(m for g in members for m in g.metrics))
        for name in names:
            if any(name in g.metrics and name != g.main_metric for g in members):
                out.append(metric_table(members, rows, cols, name, expected, titled(f"test {name}"), labels))
        rows_vary = any(len(set(g.trainable)) > 1 for g in members) or any(
            len({t for g in members if (g.values.get(rows) if rows else None) == rv for t in g.trainable}) > 1
            for rv in _ordered(members, rows))
        if rows_vary or not tested:
            out.append(params_table(members, rows, cols, titled("trainable parameters (% of all)"), labels))
    return out


def fold_method_options(groups: list, axes: dict, labels: dict, keep: tuple = ()) -> tuple:
    """With the methods as rows or columns, their options' axes (``lora.r``, ``adapter.size``) join the method's
    label (``lora r=8``) instead of making sections. Returns (new groups, the axes left); ``labels`` gains the
    folded labels. Axes in ``keep`` (the rows or columns themselves) stay."""
    options = [a for a in axes if "." in a and a not in keep]
    if not options:
        return groups, axes
    folded = []
    for g in groups:
        values = {k: v for k, v in g.values.items() if k not in options}
        parts = [f"{a.split('.')[-1]}={label(labels, a, g.values[a])}" for a in options if g.values.get(a) is not None]
        text = " ".join([label(labels, METHOD, g.values.get(METHOD)), *parts])
        values[METHOD] = text
        labels[METHOD, repr(text)] = text
        folded.append(dataclasses.replace(g, values=values))
    return folded, {a: v for a, v in axes.items() if a not in options}


def _sections(groups: list, axes: list) -> list:
    if not axes:
        return [({}, groups)]
    found: dict = {}
    for g in groups:
        key = repr([g.values.get(a) for a in axes])
        found.setdefault(key, ({a: g.values.get(a) for a in axes}, []))[1].append(g)
    return list(found.values())


# --- rendering -----------------------------------------------------------------------------------------------------

def _header(table: Table) -> list:
    return [table.corner or " "] + (["trainable", "%"] if table.params else []) + table.columns


def _cells(table: Table, i: int, row: tuple) -> list:
    """(text, bold) of every cell of row ``i``."""
    name, trainable, share, texts = row
    first = [(name, False)] + ([(trainable, False), (share, False)] if table.params else [])
    return first + [(t, (i, j) in table.best) for j, t in enumerate(texts)]


def to_markdown(tables: list, heading: str = "") -> str:
    parts = [heading] if heading else []
    for table in tables:
        header = _header(table)
        align = ["---"] + ["--:"] * (len(header) - 1)
        lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(f"**{t}**" if bold else t for t, bold in _cells(table, i, row)) + " |"
                  for i, row in enumerate(table.rows)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped; ``±`` as ``$\\pm$``, ``—`` as ``--``."""
    escaped = "".join(LATEX_SPECIAL.get(c, c) for c in str(text))
    return escaped.replace("±", r"$\pm$").replace(EMPTY, "--").replace("–", "--")


def to_latex(tables: list, source: str = "") -> str:
    """One booktabs ``table`` float per table (``\\usepackage{booktabs}``); each column's best mean in bold."""
    parts = [f"% minift.sweep tables{': ' + source if source else ''} (needs \\usepackage{{booktabs}})"]
    for table in tables:
        header = _header(table)
        lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.title)}}}",
                 rf"\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}", r"\toprule",
                 " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
        for i, row in enumerate(table.rows):
            cells = [rf"\textbf{{{latex_escape(t)}}}" if bold else latex_escape(t) for t, bold in _cells(table, i, row)]
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def to_csv(groups: list, axes: dict) -> str:
    """One line per group and test metric: the non-seed axes, metric, mean, std, n, and the parameter counts."""
    names = [a for a in axes if a != SEED]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*names, "metric", "mean", "std", "n", "main", "trainable_params", "all_params",
                     "trainable_percent"])
    for g in groups:
        counts = [sorted(set(g.trainable))[0] if g.trainable else "", g.all_params[0] if g.all_params else "",
                  g.percent[0] if g.percent else ""]
        values = [_csv_value(g.values.get(a)) for a in names]
        for metric in g.metrics or {None: []}:
            stat = g.stat(metric) if metric else None
            writer.writerow([*values, metric or "", *(stat if stat else ("", "", 0)),
                             int(metric == g.main_metric) if metric else "", *counts])
    return buffer.getvalue()


def _csv_value(value) -> str:
    if value is None:
        return ""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def cells_csv(outcomes: list, axes: dict) -> str:
    """One line per cell: its axes, status, error, parameter counts and every test metric."""
    metrics = list(dict.fromkeys(m for o in outcomes for m in ((o.summary or {}).get("test") or {})))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*axes, "status", "error", "trainable_params", "all_params", *metrics, "folder"])
    for o in outcomes:
        s = o.summary or {}
        test = s.get("test") or {}
        writer.writerow([*(_csv_value(o.cell.values.get(a)) for a in axes), o.status, o.error,
                         s.get("trainable_params", ""), s.get("all_params", ""), *(test.get(m, "") for m in metrics),
                         o.cell.config.output_dir])
    return buffer.getvalue()
