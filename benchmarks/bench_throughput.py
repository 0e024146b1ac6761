"""Training throughput, minift vs HF Trainer (+ peft): the same examples, hyper-parameters and length grouping.

Two measurements per (method, precision):

- **epoch**: one whole epoch of ``--task`` (agnews by default, from minift's own data loading, so both sides get the
  very same token ids), each library in its own subprocess (clean peak RSS): ``minift.train``'s recipe with
  ``eval_each_epoch`` off, and ``transformers.Trainer`` with ``group_by_length``, the same learning rate, warmup,
  schedule, weight decay, clipping and LoRA options (``peft`` for PEFT methods; the task head trains on both sides).
  Samples/s and tokens/s (real and padded) of the training loop, the padding fraction, peak RSS and the test
  accuracy of the final weights.
- **steady**: one fixed batch (``--batch-size`` × ``--seq-len`` tokens: real examples cut or padded, or random ids
  with ``--init random``), one optimizer step at a time, the two libraries interleaved; median step time.
  minift runs its own loop functions (``minift.train.step``); HF runs ``Trainer.training_step`` on the
  accelerate-prepared model, then clipping and the optimizer step, as the Trainer's loop does.

    MINIFT_DATA=../shared/data python benchmarks/bench_throughput.py --append          # both, LoRA + full, fp32 + bf16
    python benchmarks/bench_throughput.py --mode steady --init random --model llama-3.2-1b --device cuda \\
        --precisions bf16 --methods lora --batch-size 8 --seq-len 1024 --json out.json   # GPU shapes (gpu_check.sh)
    python benchmarks/bench_throughput.py --quick ...                                   # smoke test (tests/speed)

The reference stack (transformers, peft) is imported here only: it is a benchmark dependency, not minift's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RANDOM_LABELS = 4  # --init random: the classes of the random classification head and labels


def run_config(args, method: str, precision: str, out: str):
    from minift.train.config import TrainConfig

    return TrainConfig(task=args.task, model=args.model, init=args.init, tokenizer=args.tokenizer,
                       data_dir=args.data_dir, method=method, precision=precision, batch_size=args.batch_size,
                       max_length=args.max_length, epochs=1, max_steps=args.max_steps, eval_each_epoch=False,
                       log_every=10 ** 6, save="none", save_every_minutes=0, plot=False, seed=args.seed,
                       output_dir=out, overwrite=True, device=args.device, compile=args.compile)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- one whole epoch -------------------------------------------------------------------------------------------

def minift_epoch(args, method: str, precision: str) -> dict:
    from minift.train.recipe import Recipe

    with tempfile.TemporaryDirectory() as out:
        recipe = Recipe(run_config(args, method, precision, out))
        recipe.setup()
        lengths = recipe.plan.lengths
        batches = recipe.plan.epoch(0)[:args.max_steps or None]
        started = time.perf_counter()
        state = recipe.train()
        seconds = time.perf_counter() - started
        summary = recipe.finish()
    examples = sum(len(b) for b in batches)
    return {"seconds": seconds, "steps": state.step, "examples": examples,
            "real_tokens": sum(lengths[i] for b in batches for i in b),
            "padded_tokens": sum(len(b) * max(lengths[i] for i in b) for b in batches),
            "accuracy": summary.get("accuracy"), "precision": recipe.config.precision,
            "compile_s": summary.get("compile_s")}


def hf_model(args, method: str, config, num_labels: int, path: str):
    """The transformers model (with peft's LoRA for --method lora) of the run ``config`` describes."""
    import transformers

    if args.init == "random":
        from minift.models.presets import PRESETS

        if args.model in PRESETS:
            values = dict(PRESETS[args.model])
        else:  # a config.json, or a folder holding one
            source = Path(args.model)
            values = json.loads((source / "config.json" if source.is_dir() else source).read_text())
        hf_config = transformers.AutoConfig.for_model(**{**values, "num_labels": num_labels})
        torch.manual_seed(args.seed)
        model = transformers.AutoModelForSequenceClassification.from_config(hf_config)
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0
    if method == "lora":
        import peft

        lora = config.lora
        targets = list(lora.targets) if lora.targets else None
        model = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=lora.r, lora_alpha=lora.alpha,
                                                           lora_dropout=lora.dropout, target_modules=targets))
    elif method != "full":
        raise SystemExit(f"the HF side is written for --methods lora and full, not {method}")
    return model


def hf_trainer(args, method: str, precision: str, out: str, max_steps: int | None = None):
    """A Trainer over minift's encoded training features, with the run's hyper-parameters."""
    import transformers

    from minift.train.build import build

    config = run_config(args, method, precision, out)
    built = build(config, torch.device(args.device))
    targets = config.lora.targets or built.model.family.lora_targets
    config.lora.targets = list(targets)
    rows = [{"input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]), "labels": f["labels"]}
            for f in built.data.train]
    model = hf_model(args, method, config, built.task.num_labels, str(built.model_path))
    del built.model
    training = transformers.TrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch_size, learning_rate=config.learning_rate,
        weight_decay=config.weight_decay, warmup_steps=config.warmup, lr_scheduler_type=config.schedule,
        max_grad_norm=config.clip, adam_beta1=config.betas[0], adam_beta2=config.betas[1], adam_epsilon=config.eps,
        num_train_epochs=1, max_steps=max_steps or args.max_steps or -1, bf16=config.precision == "bf16",
        use_cpu=args.device == "cpu", train_sampling_strategy="group_by_length", save_strategy="no", eval_strategy="no",
        logging_strategy="no", report_to=[], seed=args.seed, dataloader_num_workers=0, disable_tqdm=True)
    collator = transformers.DataCollatorWithPadding(_PadOnly(built.data.special.pad), padding=True)
    trainer = transformers.Trainer(model=model, args=training, train_dataset=rows, data_collator=collator)
    return trainer, built, config


class _PadOnly:
    """What DataCollatorWithPadding needs of a tokenizer: right padding of already encoded ids."""

    padding_side, model_input_names = "right", ["input_ids", "attention_mask"]

    def __init__(self, pad_id: int):
        self.pad_token_id = pad_id

    def pad(self, features, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors="pt", **_):
        T = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [self.pad_token_id] * (T - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (T - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                "labels": torch.tensor([f["labels"] for f in features])}


def hf_epoch(args, method: str, precision: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        trainer, built, config = hf_trainer(args, method, precision, out)
        loader = trainer.get_train_dataloader()
        shapes = [tuple(b["input_ids"].shape) + (int(b["attention_mask"].sum()),) for b in loader]
        shapes = shapes[:args.max_steps or None]
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
        test = [{"input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]), "labels": f["labels"]}
                for f in built.data.test]
        prediction = trainer.predict(test)
    accuracy = float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())
    return {"seconds": seconds, "steps": result.global_step, "examples": sum(s[0] for s in shapes),
            "real_tokens": sum(s[2] for s in shapes), "padded_tokens": sum(s[0] * s[1] for s in shapes),
            "accuracy": accuracy, "precision": config.precision}


# --- steady state: one fixed batch, interleaved ----------------------------------------------------------------

def fixed_batch(args, vocab_size: int, num_labels: int, features: list) -> dict:
    B, T = args.batch_size, args.seq_len
    generator = torch.Generator().manual_seed(args.seed)
    if args.init == "random" or not features:
        ids = torch.randint(4, vocab_size, (B, T), generator=generator)
    else:
        rows = [list(f["input_ids"][:T]) for f in features[:B]]
        ids = torch.tensor([(r * (T // len(r) + 1))[:T] for r in rows])  # real tokens repeated to length T
    labels = torch.randint(0, num_labels, (B,), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones(B, T, dtype=torch.long), "labels": labels}


def random_models(args, method: str, precision: str, out: str):
    """--init random: minift's model from the preset (or config.json) and transformers' from the same config, with
    no task data (a random fixed batch, ``RANDOM_LABELS`` classes)."""
    import transformers

    from minift.models import from_config
    from minift.peft import apply

    config = run_config(args, method, precision, out)
    model = from_config(args.model, head="classification", num_labels=RANDOM_LABELS, seed=args.seed)
    config.lora.targets = list(config.lora.targets or model.family.lora_targets)
    if method != "full":
        model = apply(model, config.method_spec)
    else:
        model.requires_grad_(True)
    training = transformers.TrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch_size, learning_rate=config.learning_rate,
        weight_decay=config.weight_decay, max_grad_norm=config.clip, bf16=config.precision == "bf16",
        use_cpu=args.device == "cpu", save_strategy="no", report_to=[], seed=args.seed, disable_tqdm=True)
    hf = hf_model(args, method, config, RANDOM_LABELS, args.model)
    trainer = transformers.Trainer(model=hf, args=training, train_dataset=[{"input_ids": [4], "labels": 0}])
    batch = fixed_batch(args, model.config.vocab_size, RANDOM_LABELS, [])
    return trainer, model, config, batch, "classification"


def steady(args, method: str, precision: str) -> dict:
    from minift.optim import build_optimizer, build_scheduler
    from minift.precision import frozen_in_compute_dtype, uses_grad_scaler
    from minift.train.build import build_model
    from minift.train.compile import compile_blocks
    from minift.train.step import backward_window, optimizer_step
    from minift.train.weights import saved_names

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as out:
        if args.init == "random":
            trainer, model, config, batch, kind = random_models(args, method, precision, out)
            model = model.to(device)
        else:
            trainer, built, config = hf_trainer(args, method, precision, out, max_steps=10 ** 6)
            model = build_model(config, built.task, built.model_path, built.tokenizer, device)
            batch, kind = fixed_batch(args, model.config.vocab_size, built.task.num_labels, built.data.train), \
                built.task.kind
    frozen_in_compute_dtype(model, config.precision, skip=saved_names(model))
    if args.compile:
        compile_blocks(model, device=device)
    model.train()
    optimizer = build_optimizer(model, config.learning_rate, config.weight_decay, config.betas, config.eps)
    scheduler = build_scheduler(optimizer, "constant", 0, 10 ** 6)
    scaler = torch.amp.GradScaler(device.type, enabled=uses_grad_scaler(config.precision))

    def minift_step():
        backward_window(model, [(batch, True)], kind, config.precision, device, scaler)
        optimizer_step(model, optimizer, scheduler, scaler, config.clip)

    hf = trainer.accelerator.prepare(trainer.model)
    trainer.create_optimizer(hf)
    hf_optimizer = trainer.accelerator.prepare(trainer.optimizer)
    trainer.current_gradient_accumulation_steps = 1
    hf.train()
    hf_inputs = {k: v.to(device) for k, v in batch.items()}

    def hf_step():
        trainer.training_step(hf, hf_inputs)
        trainer.accelerator.clip_grad_norm_(hf.parameters(), config.clip)
        hf_optimizer.step()
        hf.zero_grad(set_to_none=True)

    steps = {"minift": minift_step, "hf": hf_step}
    times: dict = {name: [] for name in steps}
    for rep in range(args.warmup_steps + args.repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if rep >= args.warmup_steps:
                times[name].append(time.perf_counter() - started)
    B, T = batch["input_ids"].shape
    result = {"batch": [B, T], "precision": config.precision}
    for name, values in times.items():
        ms = statistics.median(values) * 1000
        result[name] = {"step_ms": ms, "samples_per_s": B / ms * 1000, "tokens_per_s": B * T / ms * 1000,
                        "all_ms": [round(v * 1000, 1) for v in values]}
    flops = train_flops(model, B * T, method)
    result["train_flops_per_step"] = flops
    if device.type == "cuda" and args.peak_tflops:
        for name in steps:
            result[name]["mfu"] = flops / (result[name]["step_ms"] / 1000) / (args.peak_tflops * 1e12)
    result["ratio"] = result["hf"]["step_ms"] / result["minift"]["step_ms"]
    return result


def train_flops(model, tokens: int, method: str) -> float:
    """6·N·tokens for full fine-tuning, 4·N·tokens with a frozen base (no weight gradients): N the weights of the
    block matrices (attention's T² products left out, as in the usual MFU figure)."""
    n = sum(p.numel() for block in model.blocks for p in block.parameters() if p.ndim == 2)
    return (6 if method == "full" else 4) * n * tokens


# --- driver ----------------------------------------------------------------------------------------------------

def run_case(args, case: str) -> dict:
    kind, library, method, precision = case.split(":")
    if kind == "steady":
        return steady(args, method, precision)
    result = (minift_epoch if library == "minift" else hf_epoch)(args, method, precision)
    seconds = result["seconds"]
    result.update(samples_per_s=result["examples"] / seconds, real_tokens_per_s=result["real_tokens"] / seconds,
                  padded_tokens_per_s=result["padded_tokens"] / seconds,
                  padding=1 - result["real_tokens"] / max(1, result["padded_tokens"]), peak_rss_mib=peak_rss_mib())
    return result


def run_isolated(args, case: str, argv: list) -> dict:
    """``case`` in a fresh process (its own peak RSS), or in this one with --in-process."""
    if args.in_process:
        return run_case(args, case)
    with tempfile.NamedTemporaryFile(suffix=".json") as handle:
        subprocess.run([sys.executable, __file__, *argv, "--case", case, "--case-out", handle.name], check=True,
                       cwd=ROOT)
        return json.loads(Path(handle.name).read_text())


def table(results: dict, args) -> str:
    lines = []
    for (method, _), sides in results.items():
        if "epoch" in sides:
            m, h = sides["epoch"]["minift"], sides["epoch"]["hf"]
            if not lines or not lines[0].startswith("| method"):
                lines += ["| method | precision | library | samples/s | real tok/s | padded tok/s | padding | "
                          "peak RSS MiB | test acc | minift / HF |", "|" + "---|" * 10]
            for name, r in (("minift", m), ("HF Trainer" + (" + peft" if method != "full" else ""), h)):
                ratio = f"**{m['samples_per_s'] / h['samples_per_s']:.2f}**" if name == "minift" else ""
                acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
                lines.append(f"| {method} | {r['precision']} | {name} | {r['samples_per_s']:.1f} | "
                             f"{r['real_tokens_per_s']:.0f} | {r['padded_tokens_per_s']:.0f} | {r['padding']:.1%} | "
                             f"{r['peak_rss_mib']:.0f} | {acc} | {ratio} |")
    steady_rows = [(k, s["steady"]) for k, s in results.items() if "steady" in s]
    if steady_rows:
        lines += ["", "| method | precision | batch | minift ms/step | HF ms/step | minift tok/s | minift / HF | MFU |",
                  "|" + "---|" * 8]
        for (method, _), s in steady_rows:
            mfu = f"{s['minift']['mfu']:.1%} vs {s['hf']['mfu']:.1%}" if "mfu" in s["minift"] else "n/a"
            lines.append(f"| {method} | {s['precision']} | {s['batch'][0]}×{s['batch'][1]} | "
                         f"{s['minift']['step_ms']:.0f} | {s['hf']['step_ms']:.0f} | {s['minift']['tokens_per_s']:.0f}"
                         f" | **{s['ratio']:.2f}** | {mfu} |")
    return "\n".join(lines)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="agnews")
    p.add_argument("--model", default=None, help="HF folder (default: MiniLM) or, with --init random, a preset")
    p.add_argument("--init", default="pretrained", choices=("pretrained", "random"))
    p.add_argument("--tokenizer", default=None, help="with --init random: a tokenizer folder (the task's ids)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--mode", default="both", choices=("epoch", "steady", "both"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=64, help="steady state: tokens per row of the fixed batch")
    p.add_argument("--max-steps", type=int, default=0, help="epoch: stop after this many steps (0: whole epoch)")
    p.add_argument("--repeats", type=int, default=8, help="steady state: timed steps per library")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="minift with --compile true")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    p.add_argument("--quick", action="store_true", help="smoke mode: 3 epoch steps, 2 steady steps, in-process")
    p.add_argument("--in-process", action="store_true", help="no subprocess per case (peak RSS then shared)")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--append", action="store_true", help="append a section to benchmarks/RESULTS.md")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--case-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.max_steps, args.repeats, args.warmup_steps, args.in_process = args.max_steps or 3, 2, 1, True
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.case:  # a subprocess of run_isolated
        Path(args.case_out).write_text(json.dumps(run_case(args, args.case)))
        return 0
    results: dict = {}
    for method in args.methods.split(","):
        for precision in args.precisions.split(","):
            sides = results.setdefault((method, precision), {})
            if args.mode in ("epoch", "both"):
                sides["epoch"] = {lib: run_isolated(args, f"epoch:{lib}:{method}:{precision}", argv)
                                  for lib in ("minift", "hf")}
            if args.mode in ("steady", "both"):
                sides["steady"] = run_isolated(args, f"steady:both:{method}:{precision}", argv)
    text = table(results, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{m}:{p}": v for (m, p), v in results.items()}, indent=1))
    if args.append:
        shown = " ".join(["python benchmarks/bench_throughput.py", *argv])
        machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write(f"\n## Training throughput: minift vs HF Trainer + peft (issue 13)\n\n"
                         f"`{shown}` ({machine})\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
