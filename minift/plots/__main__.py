"""``python -m minift.plots RUN_OR_SWEEP_DIR [...] [--out DIR] [--metric NAME] [--by method|model|task]
[--format png|pdf]``: the figures of a run folder, a ``--seeds`` folder or a sweep."""
from __future__ import annotations

import argparse
import sys

from minift.plots.report import BY_CHOICES, plot_folder
from minift.plots.runs import NoRuns
from minift.plots.style import FORMATS, PlotUnavailable

EPILOG = """A run folder gets curves.<fmt>: training and validation loss, validation metrics and learning rate
against optimizer steps, epochs marked. A folder of runs (any depth) is grouped by config minus the seed and gets
overlay-* (the --by values on one axis per panel, mean ± std band over seeds) and bars-* (mean ± std over seeds of
the test metric, with error bars) in <folder>/figures. Needs matplotlib: pip install 'minift[plot]'."""


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minift.plots", epilog=EPILOG,
                                     description="Figures for a report from minift run folders.")
    parser.add_argument("folders", nargs="+", metavar="RUN_OR_SWEEP_DIR",
                        help="a run folder, or a folder of run folders (--seeds output, a sweep); several are pooled")
    parser.add_argument("--out", help="where to write (default: the run folder, or <folder>/figures)")
    parser.add_argument("--metric", help="the validation/test metric to show (default: each task's main metric)")
    parser.add_argument("--by", choices=BY_CHOICES,
                        help="what the overlays and bars compare (default: the first of these that varies)")
    parser.add_argument("--format", choices=FORMATS, default="png", help="png (300 dpi) or pdf (vector)")
    args = parser.parse_args(argv)
    try:
        written = plot_folder(args.folders, args.out, args.metric, args.by, args.format)
    except (NoRuns, PlotUnavailable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
