"""GPU memory: the estimator (``minift.memory.estimate``) against measured ``torch.cuda.memory_allocated``.

Runs real training steps of minift models with random weights (``minift.memory.profile.profile_training``)
for the matrix of issue 6 and writes a markdown table (and JSON) of estimated vs measured peak allocated
memory, with the error in %:

- a Llama-3.2-3B-shaped model (3.21B parameters), batch 1, 2, 4 × 512 tokens: full fine-tuning in fp32, in
  fp32 master weights + bf16 autocast (``bf16``), in pure bf16 (``bf16-pure``); LoRA r=8 on q,v in pure bf16 and
  in fp32 + bf16 autocast;
- BERT-base (classification, batch 32 × 128) with every method, fp32 and fp32 + bf16 autocast;
- 1B decoders (batch 4 × 512, bf16 autocast): GPT-Neo-1.3B with every method, Llama-3.2-1B with every method
  it supports (it has no biases, so no BitFit).

Usage (one H100/H200, about 5 minutes)::

    python benchmarks/bench_memory_gpu.py --out benchmarks/memory_results.md
    python benchmarks/bench_memory_gpu.py --only llama-3.2-3b --max-minutes 3

A case that runs out of memory is reported as OOM beside its estimate; the run stops starting new cases after
``--max-minutes`` and writes what it has.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minift.memory.estimate import Setup, estimate
from minift.memory.profile import profile_training
from minift.memory.report import human
from minift.models.presets import resolve_model
from minift.peft.config import Method

GiB = 1024**3


def cases() -> list[tuple[str, Method, Setup]]:
    out = []
    for batch in (1, 2, 4):
        for method, precision in (("full", "fp32"), ("full", "bf16"), ("full", "bf16-pure"), ("lora", "bf16-pure"),
                                  ("lora", "bf16")):
            out.append(("llama-3.2-3b", Method(method), Setup(batch_size=batch, max_length=512, precision=precision)))
    for precision in ("fp32", "bf16"):
        for method in ("full", "lora", "adapter", "bitfit", "prompt"):
            out.append(("bert-base", Method(method), Setup(batch_size=32, max_length=128, precision=precision)))
    for method in ("full", "lora", "adapter", "bitfit", "prompt"):
        out.append(("gpt-neo-1.3b", Method(method), Setup(batch_size=4, max_length=512, precision="bf16")))
    for method in ("full", "lora", "adapter", "prompt"):
        out.append(("llama-3.2-1b", Method(method), Setup(batch_size=4, max_length=512, precision="bf16")))
    return out


def run(selected: list[tuple[str, Method, Setup]], steps: int, max_minutes: float) -> list[dict]:
    rows, start = [], time.perf_counter()
    for name, method, setup in selected:
        if time.perf_counter() - start > 60 * max_minutes:
            print(f"time budget of {max_minutes} min spent; stopping before {name} {method.label()}", flush=True)
            break
        config, _ = resolve_model(name)
        row = {"model": name, "method": method.label(), "precision": setup.precision,
               "batch": setup.batch_size, "seq_len": setup.max_length}
        est = estimate(config, method, setup)
        row.update(estimated_peak=est.peak, estimated_phase=est.peak_phase, estimated_steady=est.steady)
        try:
            prof = profile_training(config, method, setup, steps=steps)
            row.update(measured=prof.measured, estimated=prof.estimated, error_peak=prof.error("peak"),
                       seconds_per_step=prof.seconds_per_step)
        except torch.cuda.OutOfMemoryError:
            row["measured"] = "OOM"
            torch.cuda.empty_cache()
        rows.append(row)
        measured = row["measured"]
        summary = "OOM" if measured == "OOM" else (f"measured {human(measured['peak'])}, error "
                                                   f"{row['error_peak']:+.1f}%")
        print(f"{name:13s} {method.label():24s} {setup.precision:10s} b={setup.batch_size:<3d} "
              f"estimate {human(est.peak):>10s}  {summary}", flush=True)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "?"
    lines = [f"# GPU memory: estimate vs measured ({device}, torch {torch.__version__})", "",
             f"Command: `{command}`", "",
             ("Peak = `torch.cuda.max_memory_allocated` over the last of the profiled steps (steady state: optimizer "
             "states exist), minus what was allocated before the model was built. Error = (estimate − measured) / "
             "measured."), "",
             ("| model | method | precision | batch × seq | estimated peak | measured peak | error | est. phase | "
             "measured steady | s/step |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["measured"]
        measured = "OOM" if m == "OOM" else human(m["peak"])
        error = "" if m == "OOM" else f"{r['error_peak']:+.1f}%"
        steady = "" if m == "OOM" else human(m["steady state after step 2"])
        speed = "" if m == "OOM" else f"{r['seconds_per_step']:.2f}"
        lines.append(f"| {r['model']} | {r['method']} | {r['precision']} | {r['batch']} × {r['seq_len']} | "
                     f"{human(r['estimated_peak'])} | {measured} | {error} | {r['estimated_phase']} | {steady} | "
                     f"{speed} |")
    errors = [abs(r["error_peak"]) for r in rows if r["measured"] != "OOM"]
    if errors:
        lines += ["", (f"Cases: {len(errors)}; mean |error| {sum(errors) / len(errors):.1f}%, "
                      f"max |error| {max(errors):.1f}%; within 5%: {sum(e <= 5 for e in errors)}/{len(errors)}.")]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/memory_results.md", help="markdown output (JSON beside it)")
    p.add_argument("--only", action="append", help="run only these models (repeatable), e.g. llama-3.2-3b")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-minutes", type=float, default=7.0)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("this benchmark measures CUDA memory and needs a GPU (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    selected = [c for c in cases() if not args.only or c[0] in args.only]
    rows = run(selected, args.steps, args.max_minutes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, "python " + " ".join(sys.argv)))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
