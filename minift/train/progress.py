"""The rich display of a run: a progress bar with epoch/step, loss, learning rate, throughput, ETA and GPU memory,
evaluation lines as they come, and a summary table at the end."""
from __future__ import annotations

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def _gpu_memory() -> str:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return ""
    return f" · GPU {torch.cuda.max_memory_allocated() / 1024 ** 3:.1f} GiB"


class RunProgress:
    """Shows one run. ``record()`` receives the recipe's log records (``Recipe.log``: "train" and "eval" dicts)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bar: Progress | None = None
        self.task_id = None

    def start(self, total_steps: int, description: str, completed: int = 0) -> None:
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=self.console, transient=False)
        self.task_id = self.bar.add_task(description, total=total_steps, completed=completed, stats="")
        self.bar.start()

    def record(self, record: dict) -> None:
        if self.bar is None:
            return
        if record["type"] == "train":
            stats = (f"epoch {record['epoch']} · loss {record['loss']:.4f} · lr {record['lr']:.2e} · "
                     f"{record['samples_per_s']:.1f} samples/s · {record['tokens_per_s']:.0f} tok/s"
                     f"{' · skipped ' + str(record['skipped_steps']) if record['skipped_steps'] else ''}"
                     f"{_gpu_memory()}")
            self.bar.update(self.task_id, completed=record["step"], stats=stats)
        elif record["type"] == "eval":
            shown = {k: v for k, v in record.items() if isinstance(v, float) and k != "time"}
            self.bar.console.print(f"  eval @ step {record['step']} (epoch {record['epoch']}): "
                                   + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def summary_table(summary: dict) -> Table:
    """A rich table of a run's summary: test metrics, best validation, steps, time, trainable parameters."""
    table = Table(title=f"{summary['task']} · {summary['method']} · seed {summary['seed']}")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    for name, value in summary.get("test", {}).items():
        table.add_row(f"test {name}", f"{value:.4f}")
    if summary.get("best_validation") is not None:
        table.add_row(f"best validation {summary['main_metric']}", f"{summary['best_validation']:.4f} "
                      f"(step {summary['best_step']})")
    table.add_row("optimizer steps", str(summary["steps"]))
    if summary.get("skipped_steps"):
        table.add_row("skipped fp16 steps", str(summary["skipped_steps"]))
    table.add_row("trainable / all params", f"{summary['trainable_params']:,} / {summary['all_params']:,} "
                  f"({100 * summary['trainable_params'] / max(1, summary['all_params']):.2f}%)")
    if "wall_time_s" in summary:
        table.add_row("wall time", f"{summary['wall_time_s']:.1f} s")
    if summary.get("adapter"):  # python -m minift.eval: the weights evaluated
        table.add_row("weights", summary["adapter"])
    if summary.get("note"):
        table.add_row("note", summary["note"])
    table.add_row("run folder", summary["output_dir"])
    if summary.get("stopped") != "evaluated":  # a training run: where its weights go next
        table.add_row("export", f"python -m minift.export --run {summary['output_dir']} --format gguf|hf|peft")
    return table
