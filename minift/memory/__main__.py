"""``python -m minift.memory``: how much GPU memory does fine-tuning this model take?

Examples::

    python -m minift.memory --params 3e9                       # a typical 3B decoder, every method
    python -m minift.memory --model llama-3.2-3b --precision mixed-bf16 --batch-size 4 --gpu 80GB
    python -m minift.memory --model path/to/hf_folder --method lora --lora-r 16 --json
    python -m minift.memory --model llama-3.2-1b --method lora --profile   # measure on a CUDA GPU
    python -m minift.memory --model bert-base --seq-len 128 --device cpu --profile   # measure on the CPU
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import replace

from rich.console import Console

from minift.memory.estimate import ATTENTIONS, OPTIMIZERS, PRECISIONS, Setup, estimate, largest_batch, usable
from minift.memory.params import METHODS, Method
from minift.memory.presets import PRESETS, resolve_model, shape_for_params
from minift.memory.report import human, render, to_json
from minift.models.errors import ModelLoadError

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(gib|gb|g|mib|mb|m)?\s*$", re.IGNORECASE)


def parse_gpu(text: str) -> int:
    """``"80GB"`` → 80e9 bytes, ``"80GiB"`` → 80·2³⁰, a bare number is GB."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"--gpu {text!r} is not a memory size; write it like 80GB, 24GiB or 40")
    value, unit = float(match.group(1)), (match.group(2) or "gb").lower()
    scale = {"gib": 1024**3, "gb": 1e9, "g": 1e9, "mib": 1024**2, "mb": 1e6, "m": 1e6}[unit]
    if value <= 0:
        raise ValueError(f"--gpu must be positive, got {text!r}")
    return int(value * scale)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minift.memory", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help=f"preset ({', '.join(PRESETS)}), HF folder, config.json or .gguf")
    which.add_argument("--params", help="parameter count (e.g. 3e9): a typical Llama-3-style decoder of that size")
    p.add_argument("--method", choices=METHODS, action="append",
                   help="fine-tuning method; repeat for several (default: all side by side)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-targets", help="comma-separated module names (default: the family's, e.g. q_proj,v_proj)")
    p.add_argument("--adapter-size", type=int, default=64)
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32; mixed-bf16/mixed-fp16 = fp32 weights + autocast (minift.train's bf16/fp16); "
                        "bf16 = pure bf16 weights (minift.train's bf16-pure)")
    p.add_argument("--grad-accumulation", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--attention", choices=ATTENTIONS, default="sdpa")
    p.add_argument("--head", default="auto",
                   choices=["auto", "causal-lm", "classification", "regression", "token-classification", "none"],
                   help="task head (auto: causal-lm for decoders, classification for encoders)")
    p.add_argument("--padded", action="store_true", help="batches carry padding (explicit attention masks)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="whose rules to estimate with (and, with --profile, where to measure: cpu replays the "
                        "CPU allocator's events)")
    p.add_argument("--gpu", help="GPU memory, e.g. 80GB: says what fits and the largest batch that fits")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--profile", action="store_true", help="also run real steps on the CUDA GPU and compare")
    p.add_argument("--steps", type=int, default=3, help="steps to profile (the last one is measured)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        if args.model:
            config, description = resolve_model(args.model)
        else:
            config, description = shape_for_params(args.params)
        setup = Setup(batch_size=args.batch_size, seq_len=args.seq_len, precision=args.precision,
                      optimizer=args.optimizer, grad_checkpointing=args.grad_checkpointing, attention=args.attention,
                      head=None if args.head == "none" else args.head, padded=args.padded,
                      grad_accumulation=args.grad_accumulation, device=args.device)
        gpu = parse_gpu(args.gpu) if args.gpu else None
        targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()) if args.lora_targets else None
        names = args.method or [m for m in METHODS if not (m == "bitfit" and not _has_biases(config))]
        methods = [Method(name, lora_r=args.lora_r, lora_targets=targets, adapter_size=args.adapter_size,
                          prompt_length=args.prompt_length) for name in names]
        results = [estimate(config, m, setup) for m in methods]
    except (ValueError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    head = setup.resolved_head(config)
    batches = {r.method: largest_batch(config, m, setup, gpu) for r, m in zip(results, methods)} if gpu else None
    if args.json:
        print(json.dumps(to_json(results, setup, description, head, gpu, batches), indent=2))
    else:
        render(console, results, setup, description, head, gpu, batches)
    status = 0
    if gpu is not None and not any(batches.values()):
        smallest = min(results, key=lambda r: r.peak)
        print(f"nothing fits on a {human(gpu)} GPU (usable ≈ {human(usable(gpu))}): the smallest peak is "
              f"{human(smallest.peak)} ({smallest.method}, batch 1 × {setup.seq_len}). Try --grad-checkpointing, "
              "--precision bf16, a PEFT method, a shorter --seq-len or a larger GPU.", file=sys.stderr)
        status = 1
    if args.profile:
        status = max(status, _profile(console, config, methods, setup, args.steps))
    return status


def _has_biases(config) -> bool:
    return config.model_type != "llama" or config.attention_bias or config.mlp_bias


def _profile(console: Console, config, methods: list[Method], setup: Setup, steps: int) -> int:
    from minift.memory.profile import profile_training
    from minift.memory.timeline import profile_training_cpu

    try:
        for m in methods:
            if setup.device == "cpu":
                prof = profile_training_cpu(config, m, replace(setup))
            else:
                prof = profile_training(config, m, replace(setup), steps=steps)
            speed = f" ({prof.seconds_per_step:.2f} s/step)" if prof.seconds_per_step else ""
            console.print(f"\n[bold]{m.label()}[/bold] on {setup.device}: measured vs estimated{speed}")
            for phase in prof.measured:
                console.print(f"  {phase:28s} measured {human(prof.measured[phase]):>11s}  "
                              f"estimated {human(prof.estimated[phase]):>11s}  error {prof.error(phase):+6.1f}%")
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
