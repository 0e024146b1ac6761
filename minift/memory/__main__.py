"""``python -m minift.memory``: how much GPU memory does fine-tuning this model take?

Examples::

    python -m minift.memory --params 3e9                       # a typical 3B decoder, every method
    python -m minift.memory --model llama-3.2-3b --precision bf16 --batch-size 4 --gpu 80GB
    python -m minift.memory --model path/to/hf_folder --method lora --lora-r 16 --json
    python -m minift.memory --model llama-3.2-3b --quantize nf4 --precision bf16   # QLoRA: a 4-bit frozen base
    python -m minift.memory --model llama-3.2-3b --method full --gpus 4 --shard fsdp   # per GPU of torchrun's 4
    python -m minift.memory --model llama-3.2-1b --method lora --profile   # measure on a CUDA GPU
    python -m minift.memory --model bert-base --max-length 128 --device cpu --profile   # measure on the CPU

The flags are ``python -m minift.train``'s: the same names and meanings (``--precision bf16`` is fp32 weights
with bf16 autocast, ``bf16-pure`` bf16 weights, ``auto`` the default: what ``minift.train`` picks on ``--device``,
a bf16-capable GPU assumed for cuda), and the method options generated from ``minift.peft.config``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback

import torch
from rich.console import Console

from minift.memory.estimate import ATTENTIONS, OPTIMIZERS, Estimate, Setup, estimate, largest_batch, usable
from minift.memory.params import model_facts
from minift.memory.report import Unrunnable, human, render, to_json
from minift.memory.sharding import SHARDS
from minift.models.errors import ModelLoadError
from minift.models.presets import PRESETS, resolve_model, shape_for_params
from minift.models.registry import HEAD_KINDS
from minift.peft.config import METHODS, Method
from minift.peft.flags import BOOL_FLAG, add_method_flags, method_from_flags
from minift.precision import ALIASES, AUTO, PRECISIONS, resolve
from minift.quant import QUANTIZE_FORMATS

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(gib|gb|g|mib|mb|m)?\s*$", re.IGNORECASE)
OLD_SPELLING = "earlier spelling, kept for one release"


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
    aliases = ", ".join(f"{old} = {new}" for old, new in ALIASES.items())
    p = argparse.ArgumentParser(prog="python -m minift.memory", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                                epilog=f"Earlier spellings read for one release: --seq-len, --grad-accumulation, "
                                       f"--grad-checkpointing, --precision {aliases}. --precision bf16 used to mean "
                                       "pure bf16 weights here; it now means autocast, as in minift.train "
                                       "(pure bf16 is bf16-pure).")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help=f"preset ({', '.join(PRESETS)}), HF folder, config.json or .gguf")
    which.add_argument("--params", help="parameter count (e.g. 3e9): a typical Llama-3-style decoder of that size")
    p.add_argument("--method", choices=METHODS, action="append",
                   help="fine-tuning method; repeat for several (default: all side by side)")
    add_method_flags(p.add_argument_group("method options (as minift.train's; each applies to its method)"))
    p.add_argument("--train-head", default=None, **BOOL_FLAG,
                   help="whether the task head trains (default: classification/regression/token heads do)")
    p.add_argument("--precision", choices=(AUTO, *PRECISIONS, *ALIASES), default=AUTO,
                   help="auto (default, as minift.train's): bf16 where the --device has fast bf16, else fp32 — for "
                        "cuda it assumes a bf16-capable GPU (Ampere or newer; a GPU here decides for itself), for cpu "
                        "this CPU decides; fp32; fp16 / bf16 = fp32 weights + autocast; bf16-pure = bf16 weights "
                        f"({aliases}: {OLD_SPELLING})")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per micro-batch")
    p.add_argument("--max-length", "--seq-len", dest="max_length", type=int, default=512,
                   help=f"tokens per sequence (--seq-len: {OLD_SPELLING})")
    p.add_argument("--grad-accum", "--grad-accumulation", dest="grad_accum", type=int, default=1,
                   help=f"micro-batches per optimizer step (--grad-accumulation: {OLD_SPELLING})")
    p.add_argument("--gradient-checkpointing", "--grad-checkpointing", dest="gradient_checkpointing", default=False,
                   **BOOL_FLAG, help=f"recompute each block in backward (--grad-checkpointing: {OLD_SPELLING})")
    p.add_argument("--quantize", choices=QUANTIZE_FORMATS, default=None,
                   help="store the frozen base's block linears in 4 bits (QLoRA's NF4), as minift.train --quantize")
    p.add_argument("--double-quant", default=True, **BOOL_FLAG,
                   help="with --quantize: quantise the block scales to 8 bits too (default: true)")
    p.add_argument("--gpus", type=int, default=1,
                   help="processes under torchrun, one GPU each: the estimate is per GPU (--batch-size is per GPU)")
    p.add_argument("--shard", choices=SHARDS, default="ddp",
                   help="with --gpus N: ddp (a whole copy per GPU, + DDP's gradient buckets) or fsdp (weights, "
                        "gradients and optimizer states 1/N, + the all-gathered units), as minift.train --shard")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--attention", choices=ATTENTIONS, default="sdpa")
    p.add_argument("--head", default="auto", choices=["auto", *HEAD_KINDS, "none"],
                   help="task head (auto: the family's default, causal-lm for decoders; classification for encoders)")
    p.add_argument("--padded", default=False, **BOOL_FLAG,
                   help="batches carry padding (explicit attention masks)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="whose rules to estimate with (and, with --profile, where to measure: cpu replays the "
                        "CPU allocator's events)")
    p.add_argument("--gpu", help="GPU memory, e.g. 80GB: says what fits and the largest batch that fits")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--profile", action="store_true", help="also run real steps on the CUDA GPU and compare")
    p.add_argument("--steps", type=int, default=3, help="steps to profile (the last one is measured)")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an error, for a bug report (also: MINIFT_DEBUG=1)")
    return p


def resolve_precision(name: str, device: str) -> str:
    """``--precision`` as a run on ``device`` resolves it (``minift.precision.resolve``); ``auto`` for cuda with no
    CUDA device here is ``bf16``: the estimate is for a bf16-capable GPU (what most users fine-tune on)."""
    if name == AUTO and device == "cuda" and not torch.cuda.is_available():
        return "bf16"
    return resolve(name, device)


def _setup(args: argparse.Namespace) -> Setup:
    precision = resolve_precision(args.precision, args.device)
    return Setup(batch_size=args.batch_size, max_length=args.max_length, precision=precision,
                 optimizer=args.optimizer, gradient_checkpointing=args.gradient_checkpointing,
                 attention=args.attention, head=None if args.head == "none" else args.head, padded=args.padded,
                 device=args.device, grad_accum=args.grad_accum, quantize=args.quantize,
                 double_quant=args.double_quant, gpus=args.gpus, shard=args.shard)


def _methods(args: argparse.Namespace, config, setup: Setup) -> list[Method]:
    """The asked methods with their options; by default every method (BitFit only where there are biases)."""
    names = args.method
    if not names:
        biases = model_facts(config, setup.resolved_head(config), Method("full")).has_biases
        names = [m for m in METHODS if m != "bitfit" or biases]
    return [method_from_flags(name, vars(args), args.train_head) for name in names]


def _estimate(config, method: Method, setup: Setup) -> Estimate | Unrunnable:
    try:
        return estimate(config, method, setup)
    except ValueError as e:
        return Unrunnable(method.label(), str(e))


def _error(message: str, debug: bool) -> None:
    """One line naming what is wrong; with ``--debug`` (or ``MINIFT_DEBUG=1``) the traceback first."""
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.debug = args.debug or os.environ.get("MINIFT_DEBUG", "0") not in ("", "0")
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("stopped: Ctrl-C", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    console = Console(width=None if sys.stdout.isatty() else 150)
    try:
        config, description = resolve_model(args.model) if args.model else shape_for_params(args.params)
        setup = _setup(args)
        gpu = parse_gpu(args.gpu) if args.gpu else None
        methods = _methods(args, config, setup)
    except (ValueError, TypeError, ModelLoadError) as e:
        _error(str(e), args.debug)
        return 2
    except OSError as e:  # a model path that cannot be read
        _error(f"{e.strerror}: {e.filename}" if e.filename else str(e), args.debug)
        return 2
    rows = [_estimate(config, m, setup) for m in methods]
    runnable = [(r, m) for r, m in zip(rows, methods) if isinstance(r, Estimate)]
    if not runnable:
        for r in rows:
            print(f"error: {r.reason}", file=sys.stderr)
        return 2
    head = setup.resolved_head(config)
    batches = {r.method: largest_batch(config, m, setup, gpu) for r, m in runnable} if gpu else None
    if args.json:
        print(json.dumps(to_json(rows, setup, description, head, gpu, batches), indent=2))
    else:
        render(console, rows, setup, description, head, gpu, batches)
    status = 0
    if gpu is not None and not any(batches.values()):
        smallest = min((r for r, _ in runnable), key=lambda r: r.peak)
        print(f"nothing fits on a {human(gpu)} GPU (usable ≈ {human(usable(gpu))}): the smallest peak is "
              f"{human(smallest.peak)} ({smallest.method}, batch 1 × {setup.max_length}). Try "
              "--gradient-checkpointing, --precision bf16-pure, a PEFT method"
              + ("" if setup.quantize else " (with --quantize nf4: a 4-bit base)")
              + ", a shorter --max-length or a larger GPU.", file=sys.stderr)
        status = 1
    if args.profile:
        status = max(status, _profile(console, config, [m for _, m in runnable], setup, args.steps, args.debug))
    return status


def _profile(console: Console, config, methods: list[Method], setup: Setup, steps: int, debug: bool = False) -> int:
    from minift.memory.profile import profile_training
    from minift.memory.timeline import profile_training_cpu

    try:
        for m in methods:
            if setup.device == "cpu":
                prof = profile_training_cpu(config, m, setup)
            else:
                prof = profile_training(config, m, setup, steps=steps)
            speed = f" ({prof.seconds_per_step:.2f} s/step)" if prof.seconds_per_step else ""
            console.print(f"\n[bold]{m.label()}[/bold] on {setup.device}: measured vs estimated{speed}")
            for phase in prof.measured:
                console.print(f"  {phase:28s} measured {human(prof.measured[phase]):>11s}  "
                              f"estimated {human(prof.estimated[phase]):>11s}  error {prof.error(phase):+6.1f}%")
    except RuntimeError as e:
        _error(str(e), debug)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
