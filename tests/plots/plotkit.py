"""Synthetic run folders for the plot tests: metrics.jsonl, summary.json and config.json
written directly (the format ``python -m minift.train`` writes), with curves shaped like real fine-tuning runs.

``python tests/plots/plotkit.py [DIR]`` draws every kind of figure from a synthetic 3 tasks × 3 methods × 5 seeds
grid into DIR (default runs/plotkit-figures), to look at; the figures of docs/figures are from real runs.
"""
from __future__ import annotations

import json
import math
import random
import sys
import tempfile
import zlib
from pathlib import Path

TASKS = {"sst2": ("accuracy", ("accuracy", "micro_f1", "macro_f1")), "cola": ("mcc", ("mcc", "accuracy")),
         "stsb": ("pearson", ("pearson", "spearman", "mse"))}
# (how fast the loss falls, the final score) per method: full fine-tuning learns fastest, BitFit slowest.
METHODS = {"full": (0.9, 1.00), "lora": (0.7, 0.985), "bitfit": (0.45, 0.95)}
MODELS = {"bert-base-uncased": 0.97, "roberta-base": 1.0, "scibert": 0.95}  # final score factor per model
FINAL = {"accuracy": 0.93, "micro_f1": 0.93, "macro_f1": 0.92, "mcc": 0.58, "pearson": 0.90, "spearman": 0.89,
         "mse": 0.45}


def lr_at(step: int, total: int, peak: float, warmup: float = 0.06) -> float:
    """Linear warmup then linear decay, as minift's default schedule."""
    ramp = max(1, round(warmup * total))
    return peak * step / ramp if step < ramp else peak * max(0.0, (total - step) / max(1, total - ramp))


def write_run(folder: Path, task: str = "sst2", method: str = "lora", seed: int = 42, model: str = "roberta-base",
              epochs: int = 3, steps_per_epoch: int = 60, log_every: int = 10, eval_every: int = 0,
              val_loss_key: str | None = "val_loss", evals: bool = True, summary: bool = True) -> Path:
    """One synthetic run folder; returns it.

    Args:
        val_loss_key: the eval records' name for the validation loss (``val_loss`` or ``loss``), None for none.
        evals: write eval records (at each epoch end, and every ``eval_every`` steps).
        summary: write summary.json (with the test metrics).
    """
    rng = random.Random(zlib.crc32(f"{task}{method}{seed}{model}".encode()))
    speed, quality = METHODS.get(method, (0.7, 0.98))
    quality *= MODELS.get(model, 1.0)
    main, names = TASKS[task]
    total = epochs * steps_per_epoch
    peak = {"full": 3e-5, "lora": 1e-3, "bitfit": 3e-3}.get(method, 1e-3)
    start, floor = (0.69, 0.12) if task != "stsb" else (2.5, 0.35)
    records = []

    def loss(step: int, noise: float) -> float:
        return floor + (start - floor) * math.exp(-speed * 4 * step / total) + rng.gauss(0, noise)

    def score(name: str, step: int) -> float:
        rise = 1 - math.exp(-speed * 5 * step / total)
        if name == "mse":
            return 4.0 - (4.0 - FINAL[name] / quality) * rise + rng.gauss(0, 0.03)
        return FINAL[name] * quality * (0.55 + 0.45 * rise) + rng.gauss(0, 0.006)

    for step in range(1, total + 1):
        if step % log_every == 0 or step == total:
            records.append({"type": "train", "step": step, "epoch": step // steps_per_epoch, "total_steps": total,
                            "loss": loss(step, 0.03 * start), "lr": lr_at(step, total, peak), "samples_per_s": 80.0,
                            "tokens_per_s": 9000.0, "skipped_steps": 0, "time": step * 0.4})
        epoch_end = step % steps_per_epoch == 0
        if evals and (epoch_end or (eval_every and step % eval_every == 0)):
            record = {"type": "eval", "step": step, "epoch": step // steps_per_epoch,
                      "reason": "epoch" if epoch_end else "step"}
            record.update({n: score(n, step) for n in names})
            if val_loss_key:
                record[val_loss_key] = loss(step, 0.01 * start) + 0.04 * (step / total) ** 2 * (method == "full")
            records.append({**record, "time": step * 0.4 + 1})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {"task": task, "method": method, "model": f"/models/{model}", "seed": seed, "seeds": None,
              "output_dir": str(folder), "epochs": epochs, "max_steps": 0, "lr": peak, "log_every": log_every,
              "lora": {"r": 8, "alpha": 16.0}, "adapter": {"size": 64}, "plot": False}
    (folder / "config.json").write_text(json.dumps(config))
    if summary:
        spread = {"mse": 0.05}  # seeds differ more at test time than between neighbouring evaluations
        test = {n: score(n, total) + rng.gauss(0, spread.get(n, 0.012)) for n in names}
        trainable = {"full": 124_647_170, "lora": 296_450, "bitfit": 102_914}.get(method, 1000)
        (folder / "summary.json").write_text(json.dumps({
            "task": task, "method": method, "seed": seed, "model": f"/models/{model}", "main_metric": main,
            "steps": total, "trainable_params": trainable, "all_params": 124_647_170, "test": test, **test}))
    return folder


def write_grid(root: Path, tasks=("sst2", "cola", "stsb"), methods=("full", "lora", "bitfit"),
               seeds=(42, 20, 13, 5, 2), models=("roberta-base",), **options) -> Path:
    """A sweep-like folder: ``root/<model>-<task>-<method>/seed-<s>/`` run folders; returns ``root``."""
    for model in models:
        for task in tasks:
            for method in methods:
                for seed in seeds:
                    write_run(root / f"{model}-{task}-{method}" / f"seed-{seed}", task, method, seed, model,
                              **options)
    return root


def example_figures(out: Path) -> list:
    """Every kind of figure from synthetic grids, to look at the plotting code's output (docs/figures holds figures
    of real runs, not these): one run's curves, methods overlaid on one task,
    method × task bars and model × task bars (mean ± std over 5 seeds)."""
    import shutil

    from minift.plots import plot_folder, plot_run

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        methods = write_grid(Path(tmp) / "methods", eval_every=30)
        models = write_grid(Path(tmp) / "models", methods=("lora",), eval_every=30,
                            models=("bert-base-uncased", "roberta-base", "scibert"))
        written = [plot_run(methods / "roberta-base-sst2-lora" / "seed-42", output=out / "run-curves.png")]
        made = plot_folder(methods, Path(tmp) / "figures-methods", by="method")
        made += plot_folder(models, Path(tmp) / "figures-models", by="model")
        chosen = {"overlay-by-method-stsb.png": "overlay-methods.png", "bars-main-by-method.png": "bars-methods.png",
                  "bars-main-by-model.png": "bars-models.png"}
        for path in made:
            if path.name in chosen:
                written.append(Path(shutil.copy(path, out / chosen[path.name])))
    return written


if __name__ == "__main__":
    for path in example_figures(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/plotkit-figures")):
        print(path, f"{path.stat().st_size // 1024} kB")
