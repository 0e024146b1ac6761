"""Helpers of the bad-input suite: the run's command line, folder fingerprints, leftovers, a subprocess run."""
from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Assets:
    root: Path
    model: Path  # the tiny BERT folder (with vocab.txt)
    task: str  # file:train.csv,dev.csv,test.csv

    def args(self, out: Path | None, *extra: str) -> list:
        """The command line of a small full fine-tuning run into ``out`` (None: no --output-dir)."""
        where = ["--output-dir", str(out)] if out is not None else []
        return ["--task", self.task, "--model", str(self.model), "--method", "full", "--batch-size", "8",
                "--max-length", "32", "--lr", "1e-3", "--epochs", "1", "--plot", "false", "--device", "cpu",
                *where, *extra]


def fingerprint(folder: Path) -> dict:
    """Every file and folder under ``folder``: relative path → sha256 of the bytes (folders: "dir")."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*"))}


def leftovers(folder: Path) -> list:
    """What interrupted writes leave: ``*.tmp`` folders, ``.*.tmp-<pid>`` files, ``best.old``."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*")
                  if p.name.endswith((".tmp", ".old")) or ".tmp-" in p.name)


def spawn(argv: list, **kwargs) -> subprocess.Popen:
    """``python -m minift.train`` as a subprocess (stdout and stderr together)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "4000",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "minift.train", *map(str, argv)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@contextlib.contextmanager
def one_thread():
    """One torch thread: a tiny model runs faster so, and steadier on a busy machine. Runs whose results are
    compared bit for bit must use the same number of threads (it changes the order of float sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
