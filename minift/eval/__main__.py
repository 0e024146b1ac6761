"""``python -m minift.eval --task TASK [--model M] [--adapter RUN_DIR[/best]] [minift.train's task/data/precision
flags]``: a model's test metrics without training.

Examples::

    python -m minift.eval --task sst2 --model path/to/roberta-base            # before tuning (fresh head: chance)
    python -m minift.eval --task financial_phrasebank_lm --model smollm2.gguf # a decoder's generated labels
    python -m minift.eval --adapter runs/sst2-lora-20261202-101500            # a run's best weights, its own task
    python -m minift.eval --adapter runs/X/best --task mrpc --max-length 256  # ... on another task / settings

Prints the training summary's table and writes ``summary.json`` and ``config.json`` to ``--output-dir`` (default: a
new ``runs/eval-<task>-<method>-<timestamp>``; an existing folder is never written into).
"""
from __future__ import annotations

import sys


def main(argv: list | None = None) -> int:
    from rich.console import Console

    from minift.eval.cli import run_command
    from minift.eval.config import resolve_eval_config
    from minift.eval.run import evaluate_run
    from minift.train.progress import summary_table

    def body() -> int:
        console = Console(stderr=True)
        config, trained = resolve_eval_config(argv)
        summary = evaluate_run(config, trained, say=lambda line: console.print(line, highlight=False))
        console.print(summary_table(summary))
        return 0

    return run_command(body, argv)


if __name__ == "__main__":
    sys.exit(main())
