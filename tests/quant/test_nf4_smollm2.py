"""Real weights: SmolLM2-135M (the Q4_1 GGUF) loaded in bf16, and quantised to NF4 with double quantisation while
it is read (``load_pretrained(path, quantize="nf4")``).

Measured by measure_nf4_smollm2.py (5 prompts, 46 positions): per-prompt relative logit error
||nf4 - bf16|| / ||bf16|| of 0.12-0.50, top-1 agreement 35/46, KL(bf16 || nf4) 0.24-0.47 nats per position,
" Paris" kept; for scale, fp32 vs bf16 logits of the same weights differ by 0.02-0.04 with 46/46 agreement. Each
quantised matrix has a relative weight error of 0.092-0.102 (NF4 on Gaussian weights: 0.092), so this is what 210
such matrices do to a 135M model. The bounds below leave room over those numbers.

Resident bytes of the quantised model with LoRA r=8 on q, v (fresh process, after ``malloc_trim``): fp32
parameters: estimator 170.00 MB = ``quantized_bytes``, glibc's allocator 170.46 MB (+0.3%), RSS +11%; bf16
parameters: 112.39 MB, allocator 112.84 MB (+0.4%), RSS +15% (the RSS includes pages of Python objects and the
allocator's own).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from measure_nf4_smollm2 import PROMPTS  # the five prompts the numbers above were measured on

from minift.models import load_pretrained
from minift.models.gguf import load_gguf_tokenizer
from minift.quant import nf4_bytes, nf4_layers, quantized_bytes

pytestmark = pytest.mark.slow


def test_smollm2_quantised_while_loading_logits_and_bytes(smollm2_gguf):
    pytest.importorskip("gguf")
    model = load_pretrained(smollm2_gguf, dtype=torch.bfloat16).eval()
    tokenizer = load_gguf_tokenizer(smollm2_gguf)
    ids = [torch.tensor([tokenizer.encode(p).ids]) for p in PROMPTS]
    with torch.no_grad():
        reference = [model(input_ids=i)[0].float() for i in ids]  # (T, V) each
    numels = [m.weight.numel() for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)]
    bf16_bytes = quantized_bytes(model)
    del model
    quantised = load_pretrained(smollm2_gguf, dtype=torch.bfloat16, quantize="nf4").eval()

    # bytes: every block linear went from 2 bytes per weight to the NF4 + double-quantisation cost
    assert len(nf4_layers(quantised)) == len(numels) == 30 * 7
    expected = bf16_bytes - 2 * sum(numels) + sum(nf4_bytes(n, 64, True) for n in numels)
    assert quantized_bytes(quantised) == expected
    assert quantized_bytes(quantised) / bf16_bytes < 0.42  # 111.5 MB of 269.0 MB; the bf16 embedding is half of it

    with torch.no_grad():
        got = [quantised(input_ids=i)[0].float() for i in ids]
    relative = [((g - r).norm() / r.norm()).item() for g, r in zip(got, reference)]
    agree = sum((g.argmax(-1) == r.argmax(-1)).sum().item() for g, r in zip(got, reference))
    positions = sum(r.shape[0] for r in reference)
    kl = [F.kl_div(g.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="batchmean").item()
          for g, r in zip(got, reference)]
    assert max(relative) < 0.6 and sum(relative) / len(relative) < 0.45, relative
    assert agree / positions > 0.65, (agree, positions)
    assert max(kl) < 0.7, kl
    assert tokenizer.decode([got[0][-1].argmax().item()]) == " Paris"


@pytest.mark.parametrize("precision", ["fp32", "bf16-pure"])
def test_smollm2_resident_bytes_are_the_estimate(smollm2_gguf, precision):
    """A quantised SmolLM2 with LoRA, loaded in a fresh process: the estimator's weights term is the count of its
    tensors to the byte, and glibc's allocator hands out within 1% of it (RSS within 20%: Python's and the
    allocator's own pages come on top)."""
    pytest.importorskip("gguf")
    from measure_nf4_smollm2 import RESIDENT  # beside this file (pytest puts the folder on sys.path)

    out = subprocess.run([sys.executable, "-c", RESIDENT, str(smollm2_gguf), precision], capture_output=True,
                         text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["estimate"] == measured["count"]
    assert measured["allocator"] == pytest.approx(measured["estimate"], rel=0.01)
    assert measured["rss"] == pytest.approx(measured["estimate"], rel=0.2)
