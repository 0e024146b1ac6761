"""The one figure style: sizes for a report's single column, a colour-blind-safe palette, 300 dpi PNG or PDF.

matplotlib is an optional extra (``pip install 'minift[plot]'``) and is imported only when a figure is made.
Figures are ``matplotlib.figure.Figure`` objects built without pyplot, so making one changes no global state
(no backend switch, no open-figure registry to leak into a user's notebook).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

COLUMN_WIDTH = 3.3  # inches: one column of a two-column paper (ACL, IEEE); fonts below are sized for it
PANEL_HEIGHT = 1.35  # inches per stacked panel
FORMATS = ("png", "pdf")

# Okabe & Ito, "Color Universal Design" (2008): distinguishable with every common colour-vision deficiency.
# Yellow last: it is the one hard to see on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", "-.", ":")  # cycled with the colours so series stay apart in greyscale print
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "figure.titlesize": 8,
    "lines.linewidth": 1.1, "lines.markersize": 3,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "axes.linewidth": 0.6,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5,
    "axes.spines.top": False, "axes.spines.right": False,
    "legend.frameon": False, "legend.handlelength": 2.2, "legend.columnspacing": 1.2,
    "savefig.dpi": 300, "savefig.bbox": "tight", "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # TrueType in PDFs: the text stays text (selectable, and accepted by paper checkers)
    "figure.constrained_layout.use": True,  # tight layout that also makes room for legends outside the axes
}


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def require_matplotlib():
    """The ``matplotlib`` module, or :class:`PlotUnavailable` saying how to install it."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise PlotUnavailable("plots need matplotlib: pip install 'minift[plot]' (or pip install matplotlib)") \
            from None
    return matplotlib


@contextlib.contextmanager
def style():
    """The minift figure style for the figures made (and saved) inside this block."""
    matplotlib = require_matplotlib()
    from cycler import cycler

    rc = dict(RC, **{"axes.prop_cycle": cycler(color=PALETTE)})
    with matplotlib.rc_context(rc):
        yield


def new_figure(panels: int = 1, height: float | None = None, sharex: bool = True, width: float = COLUMN_WIDTH):
    """(figure, list of axes): ``panels`` axes stacked vertically at column width, built without pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height or PANEL_HEIGHT * panels + 0.5))
    axes = fig.subplots(panels, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, list(axes)


def series_style(index: int) -> dict:
    """Colour, line style and marker of the ``index``-th series (the same in every figure of a folder)."""
    return {"color": PALETTE[index % len(PALETTE)], "linestyle": LINESTYLES[index % len(LINESTYLES)],
            "marker": MARKERS[index % len(MARKERS)]}


def legend_below(fig, handles: list, labels: list) -> None:
    """One legend for the whole figure, below the axes, so it never covers a curve or a bar."""
    if not handles:
        return
    longest = max(len(label) for label in labels)
    columns = max(1, min(len(labels), 3 if longest <= 14 else 2 if longest <= 24 else 1))
    # matplotlib fills a legend column by column; reorder so it reads in the given order row by row
    rows = -(-len(labels) // columns)
    order = [r * columns + c for c in range(columns) for r in range(rows) if r * columns + c < len(labels)]
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="outside lower center", ncols=columns)


def save(fig, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``fig`` to ``path``: a vector PDF, or a 300 dpi PNG reduced to a 256-colour palette.

    The palette keeps every colour of a line figure (a few series plus their anti-aliasing) and makes the PNG
    about 3× smaller, which a report's page limit and upload form notice. The suffix follows ``fmt`` when given.
    """
    import io

    path = Path(path)
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        path = path.with_suffix("." + fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    with style():
        if path.suffix != ".png":
            fig.savefig(path)
            return path
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    from PIL import Image  # a dependency of matplotlib

    image = Image.open(buffer).convert("RGB")
    dpi = RC["savefig.dpi"]
    # method 0 = median cut, dither 0 = none (the int values work on every Pillow matplotlib accepts)
    image.quantize(colors=256, method=0, dither=0).save(path, optimize=True, dpi=(dpi, dpi))
    return path
