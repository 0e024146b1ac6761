"""``generate``: KV-cache greedy == cache-less greedy == transformers' greedy ``generate`` on every decoder family
(left-, right- and mixed-padded prompts), the cached forward against the full one, sampling (seeded, transformers'
warpers), EOS and stop strings, and a soft prompt (``PromptModel``) generating with the cache."""

from __future__ import annotations

import kit
import pytest
import torch

from minift import peft
from minift.models.attention import build_mask
from minift.models.cache import KVCache
from minift.models.generate import generate, warp_logits

transformers = pytest.importorskip("transformers")

FAMILIES = kit.DECODERS  # gpt2, gpt_neo (local window 4), llama (GQA), qwen2 (2nd layer sliding, window 4), mistral
NEW = 8  # new tokens: prompts of 10 + 8 run well past the windows of 4
NO_STOP = {"bos_token_id": None, "eos_token_id": None}  # nothing ends a row early unless a test says so


def _tiny(tiny, family: str) -> kit.Tiny:
    """A tiny causal-LM checkpoint of ``family`` (transformers model + minift loader), without bos/eos ids and
    with an untied head: a tiny random model whose head is its embedding mostly repeats its last token, and
    greedy tokens that do not vary would prove little."""
    return tiny(family, "causal-lm", tie_word_embeddings=False, **NO_STOP)


def _batch(family: str, padding: str | None = "left", B: int = 3, T: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of kit.batch: rows 1 and 2 have 3 and 5 padding positions (pad id 0)."""
    b = kit.batch(family, B=B, T=T, padding=padding)
    return b["input_ids"], b["attention_mask"]


def _hf_generate(hf, ids, mask, n=NEW, **kwargs):
    return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_equals_full_and_transformers(tiny, family):
    t = _tiny(tiny, family)
    ours = t.load()
    ids, mask = _batch(family, "left")
    cached = generate(ours, ids, mask, max_new_tokens=NEW)
    full = generate(ours, ids, mask, max_new_tokens=NEW, use_cache=False)
    assert cached.shape == (3, 10 + NEW) and torch.equal(cached[:, :10], ids)
    assert torch.equal(cached, full)
    assert torch.equal(cached, _hf_generate(t.hf, ids, mask, do_sample=False))


@pytest.mark.parametrize("family", FAMILIES)
def test_any_padding_continues_each_row_alone(tiny, family):
    """Right- and mixed-padded prompts (which transformers does not support) give each row the tokens it gets
    unpadded, on both paths."""
    ours = _tiny(tiny, family).load()
    for padding in ("right", "mixed"):
        ids, mask = _batch(family, padding)
        for use_cache in (True, False):
            got = generate(ours, ids, mask, max_new_tokens=NEW, use_cache=use_cache)
            assert torch.equal(got[:, :10], ids)
            for row in range(3):
                alone = ids[row][mask[row].bool()][None]
                want = generate(ours, alone, max_new_tokens=NEW, use_cache=False)
                assert torch.equal(got[row, 10:], want[0, alone.shape[1]:]), (padding, use_cache, row)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_forward_equals_full_forward(tiny, family):
    """A left-padded batch run as a prompt of 6 then one token at a time through the cache gives the logits of
    one full forward with positions counted over the real tokens."""
    ours = _tiny(tiny, family).load()
    ids, mask = _batch(family, "left", T=12)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    full = ours(ids, mask, position_ids=positions)  # (B, 12, V)
    cache = KVCache(len(ours.blocks), 6)  # room for 6 tokens after the prompt
    steps = [ours(ids[:, :6], mask[:, :6], position_ids=positions[:, :6], cache=cache)]
    for i in range(6, 12):
        steps.append(ours(ids[:, i:i + 1], mask[:, :i + 1], position_ids=positions[:, i:i + 1], cache=cache))
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], rtol=1e-5, atol=1e-5)
    assert cache.length == 12
    with pytest.raises(ValueError, match="KV cache holds 12 tokens"):
        ours(ids[:, :1], torch.ones(3, 13, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_mask_after_cached_tokens_is_the_full_masks_last_rows(window, padded):
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8]) if padded else torch.ones(2, 8, dtype=torch.long)
    full = build_mask(mask, 8, causal=True, window=window)
    full = torch.ones(8, 8, dtype=torch.bool).tril() if full is None else full.expand(2, 1, 8, 8)
    for past in (5, 7):
        got = build_mask(mask, 8 - past, causal=True, window=window, past=past)
        if got is None:  # one new token, nothing masked
            assert past == 7 and not padded and window is None
            continue
        assert torch.equal(got.expand(2, 1, 8 - past, 8), full[..., past:, :].expand(2, 1, 8 - past, 8))


@pytest.mark.parametrize("family", ["gpt_neo", "mistral"])
def test_sampling_is_seeded_and_matches_transformers(tiny, family):
    """The same seed repeats; another seed differs; with torch's generator seeded alike, transformers' sampling
    (same warpers, one multinomial draw per step) picks the same tokens."""
    t = _tiny(tiny, family)
    ours = t.load()
    ids, mask = _batch(family, "left")
    options = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9}
    a = generate(ours, ids, mask, max_new_tokens=NEW, seed=3, **options)
    assert torch.equal(a, generate(ours, ids, mask, max_new_tokens=NEW, seed=3, **options))
    assert torch.equal(a, generate(ours, ids, mask, max_new_tokens=NEW, generator=torch.Generator().manual_seed(3),
                                   **options))
    assert not torch.equal(a, generate(ours, ids, mask, max_new_tokens=NEW, seed=4, **options))
    assert torch.equal(a, generate(ours, ids, mask, max_new_tokens=NEW, seed=3, use_cache=False, **options))
    torch.manual_seed(3)
    assert torch.equal(a, _hf_generate(t.hf, ids, mask, **options))


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 5, None), (0.5, None, 0.8), (2.0, 50, 0.3),
                                                              (1.0, 1, None), (1.0, None, 0.0001)])
def test_warpers_equal_transformers(temperature, top_k, top_p):
    logits = torch.randn(4, 100) * 3
    logits[0, :10] = 5.0  # ties at the k-th score are kept
    want = logits.clone()
    if temperature != 1.0:
        want = transformers.TemperatureLogitsWarper(temperature)(None, want)
    if top_k:
        want = transformers.TopKLogitsWarper(top_k)(None, want)
    if top_p:
        want = transformers.TopPLogitsWarper(top_p)(None, want)
    assert torch.equal(warp_logits(logits, temperature, top_k, top_p), want)


def test_top_k_1_sampling_is_greedy(tiny):
    ours = _tiny(tiny, "llama").load()
    ids, mask = _batch("llama", "left")
    greedy = generate(ours, ids, mask, max_new_tokens=NEW)
    assert torch.equal(generate(ours, ids, mask, max_new_tokens=NEW, do_sample=True, top_k=1, seed=0), greedy)


@pytest.mark.parametrize("use_cache", [True, False])
def test_eos_ids_end_rows(tiny, use_cache):
    ours = _tiny(tiny, "gpt2").load()
    ids, mask = _batch("gpt2", "left")
    free = generate(ours, ids, mask, max_new_tokens=NEW)[:, 10:]
    eos = [int(free[0, 1]), int(free[1, 0])]  # row 0 ends at its 2nd new token, row 1 at its 1st
    got = generate(ours, ids, mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=99, use_cache=use_cache)
    for row in range(3):
        hits = torch.isin(free[row], torch.tensor(eos)).nonzero()
        end = int(hits[0]) + 1 if len(hits) else NEW  # up to and including the first EOS
        assert torch.equal(got[row, 10:10 + end], free[row, :end])
        assert (got[row, 10 + end:] == 99).all()
    assert got.shape[1] <= 10 + NEW
    everyone = generate(ours, ids, mask, max_new_tokens=NEW, eos_token_id=free[:, 0].tolist(), use_cache=use_cache)
    assert torch.equal(everyone, torch.cat([ids, free[:, :1]], dim=1))  # all rows ended: no further steps


def test_stop_strings_end_rows(tiny):
    ours = _tiny(tiny, "mistral").load()
    ids, mask = _batch("mistral", "left")
    free = generate(ours, ids, mask, max_new_tokens=NEW)[:, 10:]

    def decode(tokens):
        return "".join(f"<{t}>" for t in tokens)

    stop = f"<{int(free[0, 2])}>"  # row 0 ends at its 3rd new token (or earlier if the id came before)
    got = generate(ours, ids, mask, max_new_tokens=NEW, stop_strings=stop, decode=decode, pad_token_id=0)
    for row in range(3):
        tokens = free[row].tolist()
        end = next((i for i in range(1, NEW + 1) if stop in decode(tokens[:i])), NEW)
        assert torch.equal(got[row, 10:10 + end], free[row, :end])
        assert (got[row, 10 + end:] == 0).all()

    class Tokenizer:  # anything with .decode works too
        def decode(self, tokens):
            return decode(tokens)

    assert torch.equal(got, generate(ours, ids, mask, max_new_tokens=NEW, stop_strings=[stop, "never"],
                                     decode=Tokenizer(), pad_token_id=0, use_cache=False))
    with pytest.raises(ValueError, match="decode="):
        generate(ours, ids, mask, max_new_tokens=NEW, stop_strings=stop)


@pytest.mark.parametrize("family", ["gpt_neo", "qwen2"])
def test_peft_models_generate_with_the_cache(tiny, family):
    """A soft prompt (prepended: its virtual tokens sit in the cache from the first step) and LoRA with a
    non-zero update generate the same tokens with and without the cache."""
    ids, mask = _batch(family, "left")
    t = _tiny(tiny, family)
    prompted = peft.apply(t.load(), "prompt", length=3, init="random")
    lora = peft.apply(t.load(), "lora", r=2)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.5)
    for model in (prompted, lora):
        cached = generate(model, ids, mask, max_new_tokens=NEW)
        assert torch.equal(cached, generate(model, ids, mask, max_new_tokens=NEW, use_cache=False))
    with torch.no_grad():  # the prompt matters
        assert not torch.allclose(prompted(ids, mask), t.load()(ids, mask), atol=1e-3)


def test_bad_arguments(tiny):
    ours = _tiny(tiny, "llama").load()
    ids, mask = _batch("llama", "left")
    assert torch.equal(generate(ours, ids, mask, max_new_tokens=0), ids)
    with pytest.raises(ValueError, match="temperature"):
        generate(ours, ids, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(ours, ids, do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="seed or generator"):
        generate(ours, ids, do_sample=True, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="all 0"):
        generate(ours, ids, torch.zeros_like(mask))
    encoder = tiny("bert").load()
    with pytest.raises(ValueError, match="for decoders"):
        encoder(ids, cache=KVCache(2, 20))
