"""One training run, from a ``TrainConfig`` to a run folder:

```
<output_dir>/
  config.yaml, config.json   the resolved config (lr filled in)
  metrics.jsonl              one JSON line per training log and evaluation
  checkpoints/               resumable checkpoints (see checkpoint.py) and latest.json
  best/                      the best trainable weights (PEFT: minift.peft.save_trainable; full: an HF folder)
  summary.json               final test metrics by name, best validation metric, steps, times
  curves.png                 training loss and validation metrics against steps (with matplotlib)
```

Under ``torchrun`` each process runs this function; process 0 writes the folder and evaluates.
"""
from __future__ import annotations

import json
import os
import random
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from minift.data.encode import parse_label
from minift.data.metrics import compute_metrics
from minift.train.batching import BatchPlan
from minift.train.build import build_data, build_model, build_task, resolve_model_path
from minift.train.checkpoint import atomic_save_tensors, atomic_write_json, load_checkpoint, trainable_state
from minift.train.config import TrainConfig, check_resumable, run_folder, saved_config
from minift.train.evaluate import generate_labels, predict
from minift.train.loop import LoopSettings, LoopState, fit, unwrap
from minift.train.oom import out_of_memory_message
from minift.train.optim import build_optimizer, build_scheduler


class TrainingStopped(RuntimeError):
    """The run ended early on purpose (NaN loss, Ctrl-C); the message says what was kept and how to go on."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(config: TrainConfig) -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if config.device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {config.device}: CUDA is not available here; use --device cpu")
    return torch.device("cuda", local_rank) if config.device == "cuda" else torch.device(config.device)


def init_distributed(device: torch.device) -> tuple:
    """(rank, world size); joins the torchrun process group (nccl on CUDA, gloo on CPU) when launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def default_output_dir(config: TrainConfig) -> Path:
    """``runs/<task>-<method>-<timestamp>``; under torchrun the launcher's run id instead of the timestamp, so
    that every process names the same folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        stamp = os.environ.get("TORCHELASTIC_RUN_ID", stamp)
    return Path("runs") / f"{config.task.replace(':', '_').replace('/', '_')}-{config.method}-{stamp}"


def eval_batches(data, features: list, batch_size: int) -> list:
    """Evaluation batches of examples sorted by length (little padding; metrics do not depend on the order,
    predictions and labels stay paired). Right-padded: generation writes after each row's own end."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    return [data.collate([features[i] for i in order[start:start + batch_size]])
            for start in range(0, len(order), batch_size)]


def train_one(config: TrainConfig, progress=None) -> dict:
    """Train, select the best checkpoint on validation data, evaluate it on test; return the summary.

    Raises:
        TrainingStopped: NaN loss or Ctrl-C (the folder holds the last good checkpoint).
        minift.models.ModelLoadError / minift.data.DataError / TrainSetupError: bad model, data or options.
    """
    started = time.time()
    device = pick_device(config)
    rank, world = init_distributed(device)
    seed_everything(config.seed)
    out = Path(config.output_dir) if config.output_dir else run_folder(config.resume) if config.resume \
        else default_output_dir(config)
    saved = None
    if config.resume:  # the run's own config decides; raised limits or new evaluation settings are recorded
        saved = saved_config(config.resume)
        check_resumable(saved, config)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        kept = saved is not None and out.resolve() == run_folder(config.resume).resolve() \
            and _same_run_config(saved, config.to_dict())
        if not kept:  # a resumed run keeps its config file unless a limit or an evaluation setting changed
            (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            atomic_write_json(out / "config.json", config.to_dict())

    task = build_task(config)
    path = resolve_model_path(config)
    from minift.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(path)
    model = build_model(config, task, path, tokenizer, device)
    data = build_data(config, task, tokenizer, unwrap(model).config)
    plan = BatchPlan([len(f["input_ids"]) for f in data.train], lambda idx: data.collate([data.train[i] for i in idx]),
                     config.batch_size, config.seed, config.group_by_length, rank, world)
    steps_per_epoch = -(-len(plan) // config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    optimizer = build_optimizer(model, config.learning_rate, config.weight_decay, config.betas, config.eps)
    scheduler = build_scheduler(optimizer, config.schedule, config.warmup, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    state = LoopState()
    if config.resume:
        state = LoopState(**load_checkpoint(config.resume, model, optimizer, scheduler, scaler))
        if rank == 0:
            _truncate_log(out / "metrics.jsonl", state.step)

    val_batches = eval_batches(data, data.val, config.eval_batch_size)
    test_batches = eval_batches(data, data.test, config.eval_batch_size)

    def metrics_on(batches) -> dict:
        if task.kind == "causal-lm":
            longest = max(len(tokenizer.encode(" " + w, add_special_tokens=False).ids) for w in task.label_words)
            predictions, labels = generate_labels(
                model, batches, tokenizer.decode, lambda text: parse_label(text, task.label_words), longest + 1,
                data.special.eos, config.precision, device)
        else:
            predictions, labels = predict(model, batches, task.kind, config.precision, device)
        return compute_metrics(task, predictions, labels)

    def evaluate() -> dict:
        return metrics_on(val_batches) if rank == 0 else {}

    best_file = out / "best" / "trainable.safetensors"

    def on_best():
        if rank == 0:
            best_file.parent.mkdir(exist_ok=True)
            atomic_save_tensors(trainable_state(model), best_file)

    def log(record: dict):
        if rank != 0:
            return
        record = {**record, "time": round(time.time() - started, 3)}
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if progress is not None:
            progress.record(record)

    settings = LoopSettings(kind=task.kind, epochs=config.epochs, grad_accum=config.grad_accum,
                            precision=config.precision, device=device, clip=config.clip, max_steps=config.max_steps,
                            eval_every=config.eval_every, eval_each_epoch=config.eval_each_epoch,
                            early_stopping=config.early_stopping, log_every=config.log_every,
                            main_metric=task.main_metric, checkpoint_dir=str(out / "checkpoints"))
    if progress is not None and rank == 0:
        progress.start(total_steps, f"{task.name} · {config.method} · seed {config.seed}", state.step)
    try:
        state = fit(trained, optimizer, scheduler, scaler, plan, settings, evaluate, on_best, log, state)
    except torch.cuda.OutOfMemoryError:
        raise MemoryError(out_of_memory_message(unwrap(model), config, device)) from None
    finally:
        if progress is not None and rank == 0:
            progress.stop()

    summary = {"task": task.name, "method": config.method, "seed": config.seed, "model": str(path),
               "main_metric": task.main_metric, "validation": data.val_source,
               "best_validation": state.best_metric, "best_step": state.best_step, "steps": state.step,
               "skipped_steps": state.skipped_steps, "stopped": state.stopped or "completed",
               "train_examples": len(data.train), "test_examples": len(data.test),
               "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "all_params": sum(p.numel() for p in model.parameters()), "output_dir": str(out)}
    if state.stopped == "interrupted":
        raise TrainingStopped(f"interrupted at step {state.step}: checkpoint saved in {out / 'checkpoints'}; "
                              f"continue with --resume {out}", summary)
    if state.stopped == "nan":
        _write_summary(out, summary, rank)
        raise TrainingStopped(f"the training loss became NaN/inf before step {state.step}: stopped without saving "
                              f"that state; the last good checkpoint is in {out / 'checkpoints'} (best weights: "
                              f"{best_file}). Lower --lr, use --clip 1.0, or --precision fp32/bf16", summary)

    if rank == 0:
        _reload_best(model, best_file)
        summary["test"] = metrics_on(test_batches)
        summary.update(summary["test"])  # final test metrics by name at the top level (e.g. "accuracy")
        summary["wall_time_s"] = round(time.time() - started, 1)
        _export_best(model, out / "best")
    _write_summary(out, summary, rank)
    if world > 1:  # every process returns process 0's summary
        dist.barrier()
        summary = json.loads((out / "summary.json").read_text())
    if rank == 0 and config.plot:
        from minift.train.plots import plot_run

        plot_run(out, missing_ok=True)
    return summary


def _same_run_config(saved: dict | None, resolved: dict) -> bool:
    """True when a resumed run's config is its saved one (where it was resumed from is not part of it)."""
    if saved is None:
        return False
    ignored = ("resume", "output_dir")
    return {k: v for k, v in saved.items() if k not in ignored} == {k: v for k, v in resolved.items()
                                                                     if k not in ignored}


def _reload_best(model, best_file: Path) -> None:
    from safetensors.torch import load_file

    from minift.train.checkpoint import load_trainable_state

    if best_file.is_file():
        load_trainable_state(model, load_file(best_file), str(best_file))


def _export_best(model, folder: Path) -> None:
    """Write the best weights in the formats their users load: PEFT folder or a full HF model folder."""
    if getattr(model, "peft_spec", None) is not None:
        from minift.peft import save_trainable

        save_trainable(model, folder)
    else:
        from minift.models import save_pretrained

        save_pretrained(model, folder)


def _write_summary(out: Path, summary: dict, rank: int) -> None:
    if rank == 0:
        atomic_write_json(out / "summary.json", summary)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be written again)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))
