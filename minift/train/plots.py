"""PNG curves from run folders: training loss and validation metrics against optimizer steps, for one run or
overlaid for several (methods or seeds). matplotlib is an optional extra: ``pip install minift[plot]``."""
from __future__ import annotations

import json
from pathlib import Path


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("plots need matplotlib: pip install 'minift[plot]' (or pip install matplotlib)") \
            from None
    return plt


def read_log(run: str | Path) -> tuple:
    """(train records, eval records) of a run folder's metrics.jsonl."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a run folder written by python -m minift.train")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["type"] == "train"], [r for r in records if r["type"] == "eval"]


def _metric_names(evals: list) -> list:
    skip = {"type", "step", "epoch", "reason", "time"}
    return [k for k in (evals[0] if evals else {}) if k not in skip and isinstance(evals[0][k], (int, float))]


def plot_runs(runs: list, output: str | Path, labels: list | None = None) -> Path:
    """Overlay the curves of several run folders in one PNG (one panel for the loss, one per metric).

    Args:
        runs: run folders.
        output: the PNG path to write.
        labels: legend labels (default: each folder's name).
    Returns:
        The PNG path.
    """
    plt = _pyplot()
    logs = [read_log(run) for run in runs]
    labels = labels or [Path(run).name for run in runs]
    metrics = _metric_names(next((e for _, e in logs if e), []))
    fig, axes = plt.subplots(1, 1 + len(metrics), figsize=(5 * (1 + len(metrics)), 3.6), squeeze=False)
    for (train, evals), label in zip(logs, labels):
        axes[0][0].plot([r["step"] for r in train], [r["loss"] for r in train], label=label)
        for ax, name in zip(axes[0][1:], metrics):
            ax.plot([r["step"] for r in evals], [r.get(name) for r in evals], marker="o", label=label)
    axes[0][0].set_title("training loss")
    for ax, name in zip(axes[0][1:], metrics):
        ax.set_title(f"validation {name}")
    for ax in axes[0]:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize="small")
    fig.tight_layout()
    output = Path(output)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def plot_run(run: str | Path, missing_ok: bool = False) -> Path | None:
    """``<run>/curves.png`` for one run; with ``missing_ok`` returns None when matplotlib is absent."""
    try:
        return plot_runs([run], Path(run) / "curves.png")
    except PlotUnavailable:
        if missing_ok:
            return None
        raise


def main(argv: list | None = None) -> int:
    """``python -m minift.train.plots RUN [RUN ...] --output curves.png [--labels a,b]``: overlay runs."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m minift.train.plots", description=main.__doc__)
    parser.add_argument("runs", nargs="+", help="run folders written by python -m minift.train")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--labels", help="comma-separated legend labels (default: folder names)")
    args = parser.parse_args(argv)
    try:
        path = plot_runs(args.runs, args.output, args.labels.split(",") if args.labels else None)
    except (PlotUnavailable, FileNotFoundError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
