"""``python -m minift.sweep [SWEEP.yaml] [--grid 'key=v1,v2 ...'] [--rows AXIS] [--cols AXIS] [--tables-only]
[every python -m minift.train flag]``.

Every minift.train flag applies to every cell (``--max-steps 2 --output-dir D``; ``--output-dir`` is the sweep's
folder). Exit status: 0 when every cell finished, 1 when a cell failed (the others ran; see failed.json), 2 for a
bad sweep file or flag, 128 + the signal after Ctrl-C / SIGTERM (the running cell is checkpointed; run the same
command again to go on).
"""
from __future__ import annotations

import argparse
import sys

EPILOG = """Examples:
  python -m minift.sweep configs/sweeps/models-tasks.yaml
  python -m minift.sweep --grid 'task=cola,stsb method=full,bitfit,lora lora_r=2,8 seed=42,20,13' \\
      --model roberta-base --output-dir runs/sweeps/cola-stsb --rows method --cols task
  python -m minift.sweep --grid 'method=full,bitfit,lora lora_r=2,8,64,256' --task cola --model roberta-base \\
      --init random --train-head false --lora-targets query,value --dry-run --cols metric
Grid axes are config keys in any spelling minift.train reads (lora_r, lora.r, lora-r); a value holding commas is
written in brackets (lora_targets=[query,value],[query]). Finished cells (summary.json) are skipped on a rerun, an
interrupted one resumes from its checkpoint, a failed one is run again."""


def build_parser() -> argparse.ArgumentParser:
    """minift.train's parser (every flag, one vocabulary) with the sweep's own arguments."""
    from minift.train.flags import build_parser as train_parser

    parser = train_parser()
    parser.prog = "python -m minift.sweep"
    parser.description = "Run a grid of minift.train runs and tabulate them (mean ± std over seeds)."
    parser.epilog, parser.formatter_class = EPILOG, argparse.RawDescriptionHelpFormatter
    sweep = parser.add_argument_group("the sweep")
    sweep.add_argument("sweep_file", nargs="?", metavar="SWEEP.yaml",
                       help="a sweep file: grid: {axis: [values]}, rows, cols, output_dir and shared config keys")
    sweep.add_argument("--grid", action="append", default=[], metavar="'KEY=V1,V2 ...'",
                       help="axes of the grid (adds to or replaces the file's); may be repeated")
    sweep.add_argument("--rows", help="the tables' rows: an axis (default: the first axis other than seed)")
    sweep.add_argument("--cols", help="the tables' columns: an axis, or 'metric' (default: the second axis)")
    sweep.add_argument("--tables-only", action="store_true",
                       help="write the tables and figures from the cells already run; train nothing")
    return parser


def main(argv: list | None = None) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _run(argv, console)
    except KeyboardInterrupt:
        console.print("[yellow]stopped:[/yellow] Ctrl-C; run the same command again to go on", markup=True)
        return 130
    except Exception as err:
        from minift.data.errors import DataError
        from minift.models.errors import ModelLoadError
        from minift.train.build import TrainSetupError
        from minift.train.config import TrainConfigError
        from minift.train.recipe import TrainingStopped

        if isinstance(err, TrainingStopped):
            console.print(f"[yellow]stopped:[/yellow] {err}\nrun the same sweep command again to go on",
                          markup=True, highlight=False)
            return getattr(err, "exit_code", 130)
        if isinstance(err, (TrainConfigError, TrainSetupError, DataError, ModelLoadError)):
            console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
            return 2
        raise


def _run(argv: list, console) -> int:
    from minift.sweep import load_sweep, outcome_of, run_sweep, write_report
    from minift.train.config import nest
    from minift.train.progress import RunProgress
    from minift.train.recipe import TrainingStopped

    args = vars(build_parser().parse_args(argv))
    sweep_args = {k: args.pop(k, None) for k in ("sweep_file", "grid", "rows", "cols", "tables_only", "config",
                                                  "debug")}
    sweep = load_sweep(sweep_args["sweep_file"], sweep_args["grid"], nest(args, "command line"),
                       sweep_args["config"], sweep_args["rows"], sweep_args["cols"])
    if sweep_args["tables_only"]:
        outcomes = [outcome_of(cell) for cell in sweep.cells()]
    else:
        try:
            outcomes = run_sweep(sweep, RunProgress(console), say=lambda text: console.print(text, highlight=False))
        except (TrainingStopped, KeyboardInterrupt):  # a signal stopped a cell: the tables of what has finished
            write_report(sweep, [outcome_of(cell) for cell in sweep.cells()], figures=False)
            raise
    report = write_report(sweep, outcomes, figures=sweep.shared.get("plot", True))
    print(report["markdown"])
    console.print(f"tables: {', '.join(str(p) for p in report['files'])}" +
                  (f"; {report['figures_note']}" if report["figures_note"] else ""), highlight=False)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
