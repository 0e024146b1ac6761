"""The run folder: where a run writes, and the files in it.

```
<output_dir>/
  config.yaml, config.json   the resolved config (lr filled in, method options nested)
  metrics.jsonl              one JSON line per training log and evaluation
  checkpoints/               resumable checkpoints (see checkpoint.py) and latest.json
  best/                      the best weights, written once per improvement in their final format (PEFT: a
                             minift.peft.save_trainable folder; full fine-tuning: an HF folder, save_pretrained)
  summary.json               final test metrics by name, best validation metric, steps, times
  curves.png                 training loss and validation metrics against steps (with matplotlib)
```

Under ``torchrun`` only process 0 writes here (the checkpoint's per-process RNG files aside).
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import yaml

from minift.train.checkpoint import atomic_write_json
from minift.train.config import TrainConfig
from minift.train.distributed import launch_id
from minift.train.flags import run_folder, same_run_config

CONFIG_YAML, CONFIG_JSON, LOG, SUMMARY, BEST, CHECKPOINTS = ("config.yaml", "config.json", "metrics.jsonl",
                                                             "summary.json", "best", "checkpoints")


def default_output_dir(config: TrainConfig) -> Path:
    """``runs/<task>-<method>-<timestamp>``; under torchrun the launcher's run id instead of the timestamp, so
    that every process names the same folder."""
    stamp = launch_id(datetime.now().strftime("%Y%m%d-%H%M%S"))
    return Path("runs") / f"{config.task.replace(':', '_').replace('/', '_')}-{config.method}-{stamp}"


def output_dir(config: TrainConfig) -> Path:
    """The run's folder: ``output_dir`` if given, else the resumed run's, else :func:`default_output_dir`."""
    if config.output_dir:
        return Path(config.output_dir)
    return run_folder(config.resume) if config.resume else default_output_dir(config)


def write_config(out: Path, config: TrainConfig, saved: dict | None) -> None:
    """Write ``config.yaml`` and ``config.json``; a resumed run (``saved``: its config.json) keeps its files
    unless a limit or an evaluation setting changed."""
    out.mkdir(parents=True, exist_ok=True)
    resumed_here = saved is not None and out.resolve() == run_folder(config.resume).resolve()
    if resumed_here and same_run_config(saved, config):
        return
    (out / CONFIG_YAML).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    atomic_write_json(out / CONFIG_JSON, config.to_dict())


def append_log(out: Path, record: dict) -> None:
    with open(out / LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_log(out: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be written again)."""
    path = out / LOG
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def write_summary(out: Path, summary: dict) -> None:
    atomic_write_json(out / SUMMARY, summary)


def read_summary(out: Path) -> dict:
    return json.loads((out / SUMMARY).read_text())
