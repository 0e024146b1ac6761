"""QLoRA on a GPU: measured peak memory against ``python -m minift.memory --quantize nf4``, and tokens/s.

A Llama-3.2-1B / 3B-shaped model (``minift.models.presets``) with random weights: its block linears are built as
4-bit ``NF4Linear`` layers directly on the GPU, each quantised from a fresh N(0, 0.02²) weight one layer at a time
(``minift.memory.profile.build_random_model``: host memory stays small, and at most one fp32 weight is on the GPU
beside the 4-bit ones); LoRA (or another PEFT method) on top; a few training steps as ``minift.train`` runs them.
Per phase of the last step (weights loaded, forward, backward, optimizer step, steady state) the measured
``torch.cuda.max_memory_allocated`` is set beside the estimate (``minift.memory.profile.profile_training``), with
tokens per second over the steps.

Usage::

    python benchmarks/bench_qlora_gpu.py --out benchmarks/qlora_results.md     # one H100/H200, under 8 minutes
    python benchmarks/bench_qlora_gpu.py --dry-run --out /tmp/qlora.md          # CPU: a tiny Llama shape, 2 steps

``--dry-run`` runs the same code on the CPU (the CPU allocator's events replayed instead of
``max_memory_allocated``, ``minift.memory.timeline``) so that a test exercises the script without a GPU. The run
stops starting new cases after ``--max-minutes``; a case that runs out of memory is reported as OOM beside its
estimate. Results: a markdown table in ``--out`` and the raw numbers in the same path with ``.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minift.memory.estimate import Setup, estimate  # noqa: E402
from minift.memory.profile import build_random_model, make_optimizer, profile_training, random_batch, train_steps  # noqa: E402
from minift.memory.report import human  # noqa: E402
from minift.memory.timeline import profile_training_cpu  # noqa: E402
from minift.models.config import ModelConfig  # noqa: E402
from minift.models.presets import resolve_model  # noqa: E402
from minift.peft.config import Method  # noqa: E402
from minift.precision import param_dtype  # noqa: E402

# a Llama shape small enough for a CPU test, wide enough for the dequantised weights to show
TINY = {"model_type": "llama", "vocab_size": 512, "hidden_size": 256, "intermediate_size": 1024,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cases(dry_run: bool) -> list[tuple[str, Method, Setup]]:
    """(model, method, setup) of each case: QLoRA as people run it (bf16 autocast on fp32 LoRA / embeddings, or
    pure bf16), LoRA r=8 on q,v and r=16 on every linear, batch 1 and 4 × 512, with and without checkpointing."""
    if dry_run:
        return [("tiny", Method.of("lora", r=4), Setup(batch_size=2, max_length=32, precision=p, device="cpu",
                                                       quantize="nf4"))
                for p in ("fp32", "bf16")]
    out = []
    for precision in ("bf16", "bf16-pure"):
        for batch in (1, 4):
            out.append(("llama-3.2-3b", Method.of("lora"), Setup(batch_size=batch, precision=precision,
                                                                 quantize="nf4")))
    out.append(("llama-3.2-3b", Method.of("lora", r=16, alpha=32, targets=ALL_LINEARS),
                Setup(batch_size=4, precision="bf16", quantize="nf4")))
    out.append(("llama-3.2-3b", Method.of("lora"), Setup(batch_size=4, precision="bf16", quantize="nf4",
                                                         gradient_checkpointing=True)))
    out.append(("llama-3.2-1b", Method.of("lora"), Setup(batch_size=4, precision="bf16", quantize="nf4")))
    return out


def model_config(name: str) -> ModelConfig:
    return ModelConfig.from_hf(dict(TINY)) if name == "tiny" else resolve_model(name)[0]


def tokens_per_second(config: ModelConfig, method: Method, setup: Setup, steps: int) -> float:
    """Training tokens per second over ``steps`` steps after one warm-up step (the CPU path; on CUDA
    ``profile_training`` times its own steps)."""
    device = torch.device(setup.device)
    head = setup.resolved_head(config)
    model = build_random_model(config, method, head, device, param_dtype(setup.precision), setup.nf4)
    optimizer = make_optimizer(setup.optimizer, model)
    batch = random_batch(config, head, setup, device)
    train_steps(model, optimizer, batch, head, setup, 1)
    start = time.perf_counter()
    train_steps(model, optimizer, batch, head, setup, steps)
    return steps * setup.batch_size * setup.max_length / (time.perf_counter() - start)


def measure(name: str, method: Method, setup: Setup, steps: int) -> dict:
    config = model_config(name)
    est = estimate(config, method, setup)
    row = {"model": name, "method": method.label(), "precision": setup.precision, "batch": setup.batch_size,
           "seq_len": setup.max_length, "checkpointing": setup.gradient_checkpointing,
           "double_quant": setup.double_quant, "estimated_peak": est.peak, "estimated_phase": est.peak_phase,
           "weights": est.weights, "dequantized": est.dequantized, "params_trainable": est.params.trainable}
    try:
        if setup.device == "cuda":
            prof = profile_training(config, method, setup, steps=steps)
            tps = setup.batch_size * setup.max_length / prof.seconds_per_step
        else:
            prof = profile_training_cpu(config, method, setup)
            tps = tokens_per_second(config, method, setup, steps)
        row.update(measured=prof.measured, estimated=prof.estimated, error_peak=prof.error("peak"),
                   tokens_per_second=tps)
    except torch.cuda.OutOfMemoryError:
        row["measured"] = "OOM"
        torch.cuda.empty_cache()
    return row


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"# QLoRA memory and speed ({device}, torch {torch.__version__})", "",
             "Peak allocated memory of a training step (last of the steps), measured vs `minift.memory`'s estimate; "
             "NF4 with double quantisation, LoRA dropout 0.05, 512-token sequences unless stated.", "",
             "| model | method | precision | batch | ckpt | weights (est.) | peak measured | peak estimated | error | "
             "tokens/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["measured"]
        measured = "OOM" if m == "OOM" else human(m["peak"])
        error = "" if m == "OOM" else f"{r['error_peak']:+.1f}%"
        speed = "" if m == "OOM" else f"{r['tokens_per_second']:,.0f}"
        lines.append(f"| {r['model']} | {r['method']} | {r['precision']} | {r['batch']} × {r['seq_len']} | "
                     f"{'yes' if r['checkpointing'] else 'no'} | {human(r['weights'])} | {measured} | "
                     f"{human(r['estimated_peak'])} ({r['estimated_phase']}) | {error} | {speed} |")
    lines += ["", "Per phase (measured / estimated):", ""]
    for r in rows:
        if r["measured"] == "OOM":
            continue
        phases = ", ".join(f"{phase} {human(r['measured'][phase])} / {human(r['estimated'][phase])}"
                           for phase in r["measured"])
        lines.append(f"- {r['model']} {r['method']} {r['precision']} b={r['batch']}: {phases}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/qlora_results.md", help="markdown results (JSON beside it)")
    p.add_argument("--dry-run", action="store_true", help="a tiny Llama shape on the CPU, 2 steps (for tests)")
    p.add_argument("--steps", type=int, default=3, help="training steps per case (the last is measured)")
    p.add_argument("--max-minutes", type=float, default=6.5, help="start no new case after this many minutes")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --dry-run for the CPU check of this script", file=sys.stderr)
        return 2
    steps = 2 if args.dry_run else max(args.steps, 2)
    device = "cpu" if args.dry_run else torch.cuda.get_device_name()
    rows, start = [], time.perf_counter()
    for name, method, setup in cases(args.dry_run):
        if time.perf_counter() - start > 60 * args.max_minutes:
            print(f"time budget of {args.max_minutes} min spent; stopping before {name} {method.label()}")
            break
        row = measure(name, method, setup, steps)
        rows.append(row)
        m = row["measured"]
        print(f"{name} {row['method']} {setup.precision} b={setup.batch_size}: estimated "
              f"{human(row['estimated_peak'])}, " + ("OOM" if m == "OOM" else f"measured {human(m['peak'])} "
              f"({row['error_peak']:+.1f}%), {row['tokens_per_second']:,.0f} tokens/s"), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, device))
    meta = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "seconds": time.perf_counter() - start}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"results written to {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
