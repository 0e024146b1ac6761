"""``python -m minift.train --task TASK --method {full,lora,adapter,bitfit,prompt} [options]``.

A thin command over :func:`minift.train.recipe.train_one` and :func:`minift.train.experiment.run_seeds`; run
``python -m minift.train --help`` for every option. Under ``torchrun --nproc_per_node N`` the same command
trains with DistributedDataParallel.
"""
from __future__ import annotations

import os
import sys

from rich.console import Console


def main(argv: list | None = None) -> int:
    from minift.data.errors import DataError
    from minift.models.errors import ModelLoadError
    from minift.train import distributed
    from minift.train.build import TrainSetupError
    from minift.train.checkpoint import CheckpointLoadError
    from minift.train.config import TrainConfigError
    from minift.train.flags import resolve_config
    from minift.train.progress import RunProgress, summary_table
    from minift.train.recipe import TrainingStopped, train_one

    is_main = int(os.environ.get("RANK", "0")) == 0
    console = Console(stderr=True, quiet=not is_main)
    try:
        config = resolve_config(argv)
        if config.seeds:
            from minift.train.experiment import run_seeds

            result = run_seeds(config, RunProgress(console), console)
            console.print(result["markdown"])
            console.print(f"tables written to {result['output_dir']}/results.md and results.csv")
        else:
            summary = train_one(config, RunProgress(console))
            console.print(summary_table(summary))
    except (TrainConfigError, TrainSetupError, DataError, ModelLoadError, CheckpointLoadError) as err:
        console.print(f"[red]error:[/red] {err}", markup=True, highlight=False)
        return 2
    except TrainingStopped as stop:
        console.print(f"[yellow]stopped:[/yellow] {stop}", markup=True, highlight=False)
        return 130 if stop.summary.get("stopped") == "interrupted" else 1
    except MemoryError as err:
        console.print(f"[red]out of memory:[/red] {err}", markup=True, highlight=False)
        return 1
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
