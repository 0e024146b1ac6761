"""The GPU check of issue 13, one command, under 8 minutes, every result in files under ``--out``:

1. ``pytest -m cuda`` (the tests that need a GPU) → ``pytest_cuda.txt``;
2. ``bench_throughput.py --mode steady``: minift vs HF Trainer + peft, LoRA, bf16, random weights, on a BERT-base
   shape (batch 8 × 512: BERT's positions end at 512) and a Llama-3.2-1B shape (batch 8 × 1024): ms per step,
   tokens/s and MFU against the GPU's dense bf16 peak → ``throughput_<shape>.md`` / ``.json``;
3. the memory estimate vs measured (``bench_memory_gpu.py``, ``bench_qlora_gpu.py``, with their own time limits)
   → ``memory.md``, ``qlora.md``;
4. ``summary.md``: what ran, how long, its exit status, and the tables.

    python benchmarks/gpu_check.py --out gpu-results             # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-dry   # CPU, tiny shapes, seconds (tests/speed)

Each step runs in its own process with a time limit; a step that would pass the 8-minute budget is skipped and
said so. ``--dry-run`` runs the same steps on the CPU with tiny random shapes (the memory-vs-measured step is
GPU-only and is listed as skipped; the QLoRA one has its own ``--dry-run``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 470  # under 8 minutes, all steps together
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
# tiny shapes of the dry run (config.json dicts that minift.models.from_config and transformers both read)
TINY = {
    "bert": {"model_type": "bert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64, "pad_token_id": 0},
    "llama": {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
}


def gpu_peak_tflops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def steps(args, out: Path) -> list:
    """(name, command, time limit in seconds, output file or None)."""
    py = sys.executable
    bench = [py, "benchmarks/bench_throughput.py", "--mode", "steady", "--init", "random", "--methods", "lora",
             "--precisions", "bf16", "--in-process"]
    if args.dry_run:
        for name, config in TINY.items():
            (out / f"tiny-{name}.json").write_text(json.dumps(config))
        shapes = [("bert-base", str(out / "tiny-bert.json"), 2, 16), ("llama-1b", str(out / "tiny-llama.json"), 2, 16)]
        timing = ["--device", "cpu", "--repeats", "1", "--warmup-steps", "1"]
        pytest = [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/peft/test_cuda.py"]
        memory = None
        qlora = [py, "benchmarks/bench_qlora_gpu.py", "--dry-run", "--out", str(out / "qlora.md")]
    else:
        shapes = [("bert-base", "bert-base-uncased", 8, 512), ("llama-1b", "llama-3.2-1b", 8, 1024)]
        peak = gpu_peak_tflops()
        timing = ["--device", "cuda", "--repeats", "5", "--warmup-steps", "2",
                  *(["--peak-tflops", str(peak)] if peak else [])]
        pytest = [py, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
        memory = [py, "benchmarks/bench_memory_gpu.py", "--out", str(out / "memory.md"), "--max-minutes", "1.5"]
        qlora = [py, "benchmarks/bench_qlora_gpu.py", "--out", str(out / "qlora.md"), "--max-minutes", "1.0"]
    plan = [("pytest -m cuda", pytest, 60, out / "pytest_cuda.txt")]
    for name, model, batch, length in shapes:
        command = [*bench, "--model", model, "--batch-size", str(batch), "--seq-len", str(length), *timing,
                   "--json", str(out / f"throughput_{name}.json")]
        plan.append((f"throughput {name} (LoRA, bf16, {batch}×{length})", command, 75 if name == "bert-base" else 105,
                     out / f"throughput_{name}.md"))
    plan.append(("memory estimate vs measured", memory, 120, None))
    plan.append(("QLoRA memory estimate vs measured", qlora, 90, None))
    return plan


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-results", help="folder for every result file")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes (what the tests run)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started, rows = time.monotonic(), []
    for name, command, limit, capture in steps(args, out):
        left = BUDGET_S - (time.monotonic() - started)
        if command is None:
            rows.append((name, "skipped (GPU only)", 0.0))
            continue
        if limit > left:
            rows.append((name, f"skipped (the {BUDGET_S} s budget has {left:.0f} s left)", 0.0))
            continue
        t0 = time.monotonic()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit, check=False)
            status, text = f"exit {done.returncode}", done.stdout + done.stderr
        except subprocess.TimeoutExpired as err:
            status, text = f"timed out after {limit} s", f"{err.stdout or ''}{err.stderr or ''}"
        if capture is not None:
            capture.write_text(text if isinstance(text, str) else text.decode(errors="replace"))
        (out / "logs").mkdir(exist_ok=True)
        (out / "logs" / f"{len(rows)}.log").write_text(f"$ {' '.join(command)}\n{text}")
        rows.append((name, status, time.monotonic() - t0))
    lines = [f"# GPU check ({'dry run, CPU' if args.dry_run else 'GPU'}): {time.monotonic() - started:.0f} s\n",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {status} | {seconds:.0f} |" for name, status, seconds in rows]
    for table in sorted(out.glob("throughput_*.md")):
        body = [line for line in table.read_text().splitlines() if line.startswith("|")]
        lines += ["", f"## {table.stem}", "", *body]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(status.startswith(("exit 0", "skipped")) for _, status, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
