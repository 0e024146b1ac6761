"""greedy_generate against transformers' greedy ``generate`` on tiny random decoders."""

from __future__ import annotations

import pytest
import torch

from minift.models.generate import greedy_generate

VOCAB = 100
FAMILIES = ["llama", "gpt2"]


def _pair(tiny, family):
    """(transformers model, minift model) of a tiny decoder without bos/eos ids, so that nothing stops early."""
    t = tiny(family, "causal-lm", bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return t.hf, t.load()


def _hf_greedy(hf, ids, n, mask=None):
    out = hf.generate(input_ids=ids, attention_mask=mask if mask is not None else torch.ones_like(ids),
                      max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_transformers(tiny, family):
    hf, ours = _pair(tiny, family)
    ids = torch.randint(3, VOCAB, (2, 7))
    got = greedy_generate(ours, ids, max_new_tokens=6)
    assert got.shape == (2, 13) and torch.equal(got[:, :7], ids)
    assert torch.equal(got, _hf_greedy(hf, ids, 6))


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_matches_transformers(tiny, tiny_batch, family):
    """transformers derives position ids from the mask; our packing gives GPT-2 the same positions."""
    hf, ours = _pair(tiny, family)
    b = tiny_batch(family, T=8, padding="left")  # rows 1 and 2 start with 3 and 5 pad ids (0)
    ids, mask = b["input_ids"], b["attention_mask"]
    got = greedy_generate(ours, ids, max_new_tokens=5, attention_mask=mask)
    assert torch.equal(got[:, 8:], _hf_greedy(hf, ids, 5, mask)[:, 8:])
    alone = greedy_generate(ours, ids[2:, 5:], max_new_tokens=5)  # the same prompt without padding
    assert torch.equal(got[2, 8:], alone[0, 3:])


@pytest.mark.parametrize("family", FAMILIES)
def test_right_padding_continues_each_row(tiny, family):
    _, ours = _pair(tiny, family)
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    got = greedy_generate(ours, ids, max_new_tokens=4, attention_mask=mask)
    alone = greedy_generate(ours, ids[:1, :4], max_new_tokens=4)
    assert torch.equal(got[:, :6], ids)  # the prompt is returned as given
    assert torch.equal(got[0, 6:], alone[0, 4:])  # row 0 continues after its 4 real tokens
    assert torch.equal(got[1:], greedy_generate(ours, ids[1:], max_new_tokens=4))


def test_eos_stops_and_pads(tiny):
    _, ours = _pair(tiny, "llama")
    ids = torch.randint(3, VOCAB, (2, 5))
    free = greedy_generate(ours, ids, max_new_tokens=6)
    eos = int(free[0, 6])  # row 0's second new token
    got = greedy_generate(ours, ids, max_new_tokens=6, eos_token_id=eos)
    ends = []
    for row in range(2):
        hits = (free[row, 5:] == eos).nonzero()
        end = 5 + int(hits[0]) + 1 if len(hits) else 11  # up to and including the first eos
        ends.append(end)
        assert torch.equal(got[row, :end], free[row, :end])
        assert (got[row, end:] == eos).all()  # a finished row is filled with eos
    assert ends[0] == 7
    assert got.shape[1] == max(ends)  # stops once every row has finished


def test_zero_tokens_and_bad_input(tiny):
    _, ours = _pair(tiny, "llama")
    ids = torch.randint(3, VOCAB, (1, 4))
    assert torch.equal(greedy_generate(ours, ids, 0), ids)
    with pytest.raises(ValueError, match="input_ids must be"):
        greedy_generate(ours, ids[0], 2)
    with pytest.raises(ValueError, match="attention_mask"):
        greedy_generate(ours, ids, 2, attention_mask=torch.ones(1, 3, dtype=torch.long))
