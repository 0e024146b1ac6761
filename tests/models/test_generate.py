"""greedy_generate against transformers' greedy ``generate`` on tiny random decoders."""

from __future__ import annotations

import pytest
import torch
import transformers

from minift.models import load_pretrained
from minift.models.generate import greedy_generate

VOCAB = 100


def _llama(tmp_path):
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


def _gpt2(tmp_path):
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


def _pair(make, tmp_path):
    hf = make(tmp_path)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return hf, load_pretrained(tmp_path)


def _hf_greedy(hf, ids, n, mask=None):
    out = hf.generate(input_ids=ids, attention_mask=mask if mask is not None else torch.ones_like(ids),
                      max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out


@pytest.mark.parametrize("make", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_greedy_matches_transformers(tmp_path, make):
    hf, ours = _pair(make, tmp_path)
    ids = torch.randint(3, VOCAB, (2, 7))
    got = greedy_generate(ours, ids, max_new_tokens=6)
    assert got.shape == (2, 13) and torch.equal(got[:, :7], ids)
    assert torch.equal(got, _hf_greedy(hf, ids, 6))


@pytest.mark.parametrize("make", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_left_padded_batch_matches_transformers(tmp_path, make):
    """transformers derives position ids from the mask; our packing gives GPT-2 the same positions."""
    hf, ours = _pair(make, tmp_path)
    ids = torch.randint(3, VOCAB, (3, 8))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :5] = 0
    ids = ids.masked_fill(mask == 0, 0)
    got = greedy_generate(ours, ids, max_new_tokens=5, attention_mask=mask)
    assert torch.equal(got[:, 8:], _hf_greedy(hf, ids, 5, mask)[:, 8:])
    alone = greedy_generate(ours, ids[2:, 5:], max_new_tokens=5)  # the same prompt without padding
    assert torch.equal(got[2, 8:], alone[0, 3:])


@pytest.mark.parametrize("make", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_right_padding_continues_each_row(tmp_path, make):
    _, ours = _pair(make, tmp_path)
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    got = greedy_generate(ours, ids, max_new_tokens=4, attention_mask=mask)
    alone = greedy_generate(ours, ids[:1, :4], max_new_tokens=4)
    assert torch.equal(got[:, :6], ids)  # the prompt is returned as given
    assert torch.equal(got[0, 6:], alone[0, 4:])  # row 0 continues after its 4 real tokens
    assert torch.equal(got[1:], greedy_generate(ours, ids[1:], max_new_tokens=4))


def test_eos_stops_and_pads(tmp_path):
    _, ours = _pair(_llama, tmp_path)
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


def test_zero_tokens_and_bad_input(tmp_path):
    _, ours = _pair(_llama, tmp_path)
    ids = torch.randint(3, VOCAB, (1, 4))
    assert torch.equal(greedy_generate(ours, ids, 0), ids)
    with pytest.raises(ValueError, match="input_ids must be"):
        greedy_generate(ours, ids[0], 2)
    with pytest.raises(ValueError, match="attention_mask"):
        greedy_generate(ours, ids, 2, attention_mask=torch.ones(1, 3, dtype=torch.long))
