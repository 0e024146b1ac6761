"""Real weights: SmolLM2-135M (the Q4_1 GGUF, loaded in bf16) quantised to NF4 with double quantisation.

Measured by measure_nf4_smollm2.py (5 prompts, 46 positions): per-prompt relative logit error
||nf4 - bf16|| / ||bf16|| of 0.11-0.51, top-1 agreement 35/46, KL(bf16 || nf4) 0.25-0.49 nats per position,
" Paris" kept; for scale, fp32 vs bf16 logits of the same weights differ by 0.02-0.04 with 46/46 agreement. Each
quantised matrix has a relative weight error of 0.092-0.102 (NF4 on Gaussian weights: 0.092), so this is what 210
such matrices do to a 135M model. The bounds below leave room over those numbers. Bytes: bf16 269.0 MB ->
111.5 MB; quantising frees 157.6 MB by the count, 157.2 MB by the allocator, 156.2 MB by RSS.
"""
from __future__ import annotations

import ctypes
import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minift.models import load_pretrained
from minift.models.gguf import load_gguf_tokenizer
from minift.quant import nf4_bytes, nf4_layers, quantize_model, quantized_bytes

pytestmark = pytest.mark.slow
PROMPTS = ["The capital of France is", "Water boils at a temperature of", "Once upon a time, there was a little"]


def _allocated() -> int | None:
    """Bytes glibc's malloc has handed out and not taken back (heap + mmapped chunks), or None off glibc."""

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    gc.collect()
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def test_smollm2_nf4_logits_bytes_and_allocator(smollm2_gguf):
    pytest.importorskip("gguf")
    model = load_pretrained(smollm2_gguf, dtype=torch.bfloat16).eval()
    tokenizer = load_gguf_tokenizer(smollm2_gguf)
    ids = [torch.tensor([tokenizer.encode(p).ids]) for p in PROMPTS]
    with torch.no_grad():
        reference = [model(input_ids=i)[0].float() for i in ids]  # (T, V) each
    numels = [m.weight.numel() for m in model.blocks.modules() if isinstance(m, nn.Linear)]
    bf16_bytes = quantized_bytes(model)
    before = _allocated()
    quantize_model(model, double_quant=True)
    after = _allocated()

    # bytes: every block linear went from 2 bytes per weight to the NF4 + double-quantisation cost
    assert len(nf4_layers(model)) == len(numels) == 30 * 7
    expected = bf16_bytes - 2 * sum(numels) + sum(nf4_bytes(n, 64, True) for n in numels)
    assert quantized_bytes(model) == expected
    assert quantized_bytes(model) / bf16_bytes < 0.42  # 111.5 MB of 269.0 MB; the bf16 embedding is half of it
    if before is not None:  # the allocator gives back what the count says (measured: 157.2 MB vs 157.5 MB)
        assert before - after == pytest.approx(bf16_bytes - expected, rel=0.02)

    with torch.no_grad():
        got = [model(input_ids=i)[0].float() for i in ids]
    relative = [((g - r).norm() / r.norm()).item() for g, r in zip(got, reference)]
    agree = sum((g.argmax(-1) == r.argmax(-1)).sum().item() for g, r in zip(got, reference))
    positions = sum(r.shape[0] for r in reference)
    kl = [F.kl_div(g.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="batchmean").item()
          for g, r in zip(got, reference)]
    assert max(relative) < 0.6 and sum(relative) / len(relative) < 0.45, relative
    assert agree / positions > 0.65, (agree, positions)
    assert max(kl) < 0.7, kl
    assert tokenizer.decode([got[0][-1].argmax().item()]) == " Paris"
