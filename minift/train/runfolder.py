"""The run folder: where a run writes, the files in it, and the rule that it is never written by two runs.

```
<output_dir>/
  config.yaml, config.json   the resolved config (lr filled in, method options nested, paths absolute)
  metrics.jsonl              one JSON line per training log and evaluation
  checkpoints/               resumable checkpoints (see checkpoint.py) and latest.json
  best/                      the best weights, written once per improvement in their final format (PEFT: a
                             minift.peft.save_trainable folder; full fine-tuning: an HF folder, save_pretrained)
  summary.json               final test metrics by name, best validation metric, steps, times
  curves.png                 training loss and validation metrics against steps (with matplotlib)
  samples.jsonl              SFT with --sample-answers N: the best weights' answers to N test prompts
```

A run :func:`claim`\\ s its folder before set-up and writes nothing into it until set-up has succeeded
(:meth:`RunFolder.open`), so a failed start leaves a previous run's folder byte-identical:

- ``--output-dir DIR`` that is not empty is refused unless it is the run being resumed (``--resume DIR``) or
  ``--overwrite`` is given (which deletes the earlier run's files — :data:`RUN_FILES` — once this run has started,
  and keeps anything else); a file in the way, or a folder that cannot be created, is an error before set-up;
- the default ``runs/<task>-<method>-<timestamp>`` is created exclusively (``-2``, ``-3``, ... when taken, so two runs
  started in the same second get two folders); under torchrun process 0 creates it and tells the others;
- while a run writes to a folder it holds a lock on it (``flock`` on the folder, POSIX): a second run started on
  the same folder — the same ``--resume`` submitted twice — is refused instead of mixing their files.

Under ``torchrun`` only process 0 writes here (the checkpoint's per-process RNG files aside).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from minift.train import distributed
from minift.train.build import TrainSetupError, pick_device
from minift.train.checkpoint import find_checkpoint, recover_weights, remove_stale
from minift.train.config import TrainConfig
from minift.train.flags import run_folder, same_run_config
from minift.train.savestate import atomic_write_bytes, atomic_write_json

CONFIG_YAML, CONFIG_JSON, LOG, SUMMARY, BEST, CHECKPOINTS = ("config.yaml", "config.json", "metrics.jsonl",
                                                             "summary.json", "best", "checkpoints")
SAMPLES = "samples.jsonl"
# What a run writes: the files --overwrite deletes (and the --seeds tables of an experiment folder).
RUN_FILES = (CONFIG_YAML, CONFIG_JSON, LOG, SUMMARY, BEST, BEST + ".tmp", BEST + ".old", CHECKPOINTS, "curves.png",
             "results.md", "results.csv", SAMPLES)

_HELD: dict = {}  # folder → open descriptor holding its lock, for this process (a later run here may reuse it)


def default_output_dir(config: TrainConfig) -> Path:
    """A new, empty ``runs/<task>-<method>-<timestamp>[-N]`` folder, created exclusively (under torchrun by
    process 0, every process returns its name)."""
    distributed.init(pick_device(config.device))  # a no-op unless launched by torchrun (and already done there)
    made = _create_new(config) if distributed.is_main() else ""
    return Path(distributed.text_from_main(str(made)))


def _create_new(config: TrainConfig) -> Path:
    base = Path("runs") / f"{task_stem(config.task)}-{config.method}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        made = create_exclusive(base, 10_000)
    except OSError as err:
        raise TrainSetupError(f"cannot create the run folder {err.filename or base} ({err.strerror}): pass "
                              "--output-dir DIR somewhere writable") from None
    if made is not None:
        return made
    raise TrainSetupError(f"{base.parent} holds too many runs named {base.name}: pass --output-dir")


def task_stem(task: str) -> str:
    """A task name as part of a folder name (``file:a/b.csv`` → ``file_a_b.csv``)."""
    return task.replace(":", "_").replace("/", "_").replace(",", "_")


def create_exclusive(base: Path, limit: int) -> Path | None:
    """Create ``base``, else ``base-2``, ``base-3`` ... (up to ``limit`` names), exclusively: the first folder this
    call made, so two runs started in the same second never share one; None when every name is taken. Other
    ``OSError``s (no permission, a file in the way) propagate."""
    for n in range(1, limit):
        path = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    return None


@dataclass
class RunFolder:
    """A run's folder as :func:`claim` found it. ``open()`` once set-up has succeeded, ``release()`` at the end."""

    path: Path
    created: bool  # this run created it (the default folder): removed again if the start fails while it is empty
    resumed_here: bool  # it is the folder of the run being resumed

    def open(self, config: TrainConfig, saved: dict | None, step: int) -> Path:
        """Set-up succeeded: create the folder, lock it, delete an earlier run's files (``--overwrite``) or finish
        what a crash of the resumed run left (an interrupted best/ replacement, ``.tmp`` leftovers, log lines after
        its checkpoint ``step``), and write the config. Process 0 only; returns the path."""
        if not distributed.is_main():
            return self.path
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrainSetupError(f"--output-dir {self.path} cannot be created ({err.strerror})") from None
        _lock(self.path)
        if not self.resumed_here:
            check_empty(self.path, config)  # again: another run may have started writing here during set-up
            if config.overwrite:
                for name in RUN_FILES:
                    _delete(self.path / name)
        else:
            recover_weights(self.path / BEST)
            remove_stale(self.path)
            remove_stale(self.path / CHECKPOINTS)
            truncate_log(self.path, step)
        write_config(self.path, config, saved if self.resumed_here else None)
        return self.path

    def release(self, failed: bool) -> None:
        """Unlock the folder; after a failed start, remove the folder this run created if it is still empty."""
        fd = _HELD.pop(self.path.resolve(), None) if self.path.exists() else None
        if fd is not None:
            os.close(fd)
        if failed and self.created and distributed.is_main() and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()


def claim(config: TrainConfig) -> RunFolder:
    """The run's folder, checked before set-up (writable, empty or the resumed run's, not in use); nothing is
    written into it, only the default folder is created (empty). See the module docstring."""
    if not config.output_dir and not config.resume:
        path = default_output_dir(config)
        if distributed.is_main():
            _lock(path)
        return RunFolder(path, created=True, resumed_here=False)
    path = Path(config.output_dir) if config.output_dir else run_folder(config.resume)
    resumed_here = bool(config.resume) and _same_folder(path, run_folder(config.resume))
    if distributed.is_main():
        if path.exists() and not path.is_dir():
            raise TrainSetupError(f"--output-dir {path} is a file, not a folder: choose another --output-dir")
        if path.is_dir():
            if not os.access(path, os.W_OK | os.X_OK):
                raise TrainSetupError(f"--output-dir {path} is not writable (permission denied): choose another "
                                      "--output-dir")
            if not resumed_here:
                check_empty(path, config)
            _lock(path)
        else:
            _check_creatable(path)
    return RunFolder(path, created=False, resumed_here=resumed_here)


def _same_folder(a: Path, b: Path) -> bool:
    return a.expanduser().resolve() == b.expanduser().resolve()


def _check_creatable(path: Path) -> None:
    """Raise when ``path`` cannot be created: an ancestor is a file, or the nearest existing one is not writable."""
    ancestor = path.expanduser().absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TrainSetupError(f"--output-dir {path} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TrainSetupError(f"--output-dir {path} cannot be created: no permission to write in {ancestor}")


def check_empty(path: Path, config: TrainConfig) -> None:
    """Refuse a non-empty ``path`` unless ``--overwrite``: say what is there and the ways on."""
    entries = sorted(p.name for p in path.iterdir())
    if not entries or config.overwrite:
        return
    if (path / CONFIG_JSON).is_file():
        raise TrainSetupError(f"--output-dir {path} already holds {describe(path)}. Continue it with `--resume "
                              f"{path}`, replace it with --overwrite (its files are deleted once this run has "
                              "started), or choose another --output-dir")
    shown = ", ".join(entries[:6]) + (f" and {len(entries) - 6} more" if len(entries) > 6 else "")
    raise TrainSetupError(f"--output-dir {path} is not empty (it holds {shown}): choose another --output-dir, or "
                          "pass --overwrite to write the run there anyway (other files are kept)")


def describe(path: Path) -> str:
    """What a run folder holds, in a few words (for the message that refuses to write into it)."""
    try:
        summary = json.loads((path / SUMMARY).read_text())
        metric = summary.get("main_metric")
        tested = f", test {metric} {summary[metric]:.4f}" if isinstance(summary.get(metric), float) else ""
        return f"a run that ended ({summary.get('stopped', '?')} after {summary.get('steps', '?')} steps{tested})"
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        pass
    try:
        return f"a run that stopped at checkpoint {find_checkpoint(path).name}"
    except ValueError:
        return "a run without a checkpoint (config.json)"


def _lock(path: Path) -> None:
    """Hold an exclusive lock on the folder while this process writes to it (once per process)."""
    key = path.resolve()
    if key in _HELD:
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TrainSetupError(f"{path} is in use by another minift run right now (it holds the folder's lock): wait "
                              "for it to end, or choose another --output-dir") from None
    except OSError:  # a file system without locks (some network mounts): the run goes on unlocked
        os.close(fd)
        return
    _HELD[key] = fd


def _delete(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def write_config(out: Path, config: TrainConfig, saved: dict | None) -> None:
    """Write ``config.yaml`` and ``config.json``; a resumed run (``saved``: its config.json) keeps its files
    unless a limit or an evaluation setting changed."""
    if saved is not None and same_run_config(saved, config):
        return
    atomic_write_json(out / CONFIG_JSON, config.to_dict())
    atomic_write_bytes(out / CONFIG_YAML, yaml.safe_dump(config.to_dict(), sort_keys=False).encode("utf-8"))


def append_log(out: Path, record: dict) -> None:
    with open(out / LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_log(out: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed (they will be written again)."""
    path = out / LOG
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except (ValueError, AttributeError):  # a line cut short by a crash
            continue
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode("utf-8"))


def write_summary(out: Path, summary: dict) -> None:
    atomic_write_json(out / SUMMARY, summary)


def write_samples(out: Path, rows: list) -> None:
    """``samples.jsonl``: one JSON object per generated answer (prompt, reference answer, generated text)."""
    (out / SAMPLES).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def read_summary(out: Path) -> dict:
    return json.loads((out / SUMMARY).read_text())
