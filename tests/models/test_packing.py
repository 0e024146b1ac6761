"""Packed sequences (minift.data.pack): on every decoder family of the kit, a packed, padded batch gives each example
the logits it has alone — against minift's own unpacked run and transformers' — and the same summed loss. Sliding
windows (GPT-Neo's local layer, Qwen2, Mistral: window 4) are shorter than the examples, learned positions (GPT-2,
GPT-Neo) and RoPE (Llama, Qwen2, Mistral) both restart per example."""
import kit
import pytest
import torch

from minift.data.collate import collate
from minift.data.example import IGNORE_INDEX
from minift.data.pack import pack
from minift.losses import loss_sum
from minift.models.attention import build_mask

LENGTHS = [9, 5, 7, 4, 6, 8]  # packed into 24 tokens (first fit, longest first): [9, 8, 7] and [6, 5, 4] + padding


def _features(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(4, kit.VOCAB, (n,), generator=g).tolist()
        prompt = int(torch.randint(1, n, (), generator=g))
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def _alone(model, feature):
    return model(input_ids=torch.tensor([feature["input_ids"]]))[0]  # (n, V)


@pytest.mark.parametrize("family", kit.DECODERS)
def test_packed_logits_equal_unpacked(tiny, family):
    checkpoint = tiny(family, "causal-lm")
    model, reference = checkpoint.load().eval(), checkpoint.hf
    features = _features(LENGTHS)
    packed = pack(features, max_length=24)
    assert sorted(len(p["input_ids"]) for p in packed) == [15, 24]  # two rows, the second padded
    batch = collate(packed, pad_id=kit.FAMILIES[family].pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], segment_ids=batch["segment_ids"])  # (2, 24, V)
        by_example = {}
        for row, p in enumerate(packed):
            start = 0
            for segment in sorted(set(p["segment_ids"])):
                n = p["segment_ids"].count(segment)
                by_example[tuple(p["input_ids"][start:start + n])] = logits[row, start:start + n]
                start += n
        for feature in features:
            ours = by_example[tuple(feature["input_ids"])]
            torch.testing.assert_close(ours, _alone(model, feature), rtol=1e-4, atol=1e-5)
            ids = torch.tensor([feature["input_ids"]])
            torch.testing.assert_close(ours, reference(input_ids=ids).logits[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", kit.DECODERS)
def test_packed_loss_equals_the_sum_of_unpacked_losses(tiny, family):
    model = tiny(family, "causal-lm").load().eval()
    features = _features(LENGTHS, seed=1)
    batch = collate(pack(features, max_length=24), pad_id=kit.FAMILIES[family].pad_id)
    with torch.no_grad():
        packed = loss_sum("causal-lm", model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                             position_ids=batch["position_ids"], segment_ids=batch["segment_ids"]),
                          batch["labels"])
        alone = sum(loss_sum("causal-lm", _alone(model, f)[None], torch.tensor([f["labels"]])) for f in features)
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-4)


def test_segments_and_positions_both_matter(tiny):
    """Without the segment mask examples see each other; without restarted positions they sit elsewhere. (GPT-2's
    learned absolute positions show the second; RoPE within a segment sees only relative offsets.)"""
    model = tiny("gpt2", "causal-lm").load().eval()
    features = _features([6, 5])
    batch = collate(pack(features, max_length=11), pad_id=0)
    second = torch.tensor(features[1]["input_ids"])
    with torch.no_grad():
        alone = _alone(model, features[1])
        no_segments = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"])[0, 6:]
        no_positions = model(input_ids=batch["input_ids"], segment_ids=batch["segment_ids"])[0, 6:]
    assert batch["input_ids"][0, 6:].equal(second)
    assert not torch.allclose(no_segments, alone, atol=1e-3)
    assert not torch.allclose(no_positions, alone, atol=1e-3)


def test_pack_keeps_every_example_whole_and_labels_no_boundary():
    features = _features([3, 8, 2, 5, 9, 3, 7])
    packed = pack(features, max_length=10)
    assert all(len(p["input_ids"]) <= 10 for p in packed)
    seen = []
    for p in packed:
        start = 0
        for segment in sorted(set(p["segment_ids"])):
            n = p["segment_ids"].count(segment)
            assert p["position_ids"][start:start + n] == list(range(n))
            assert p["labels"][start] == IGNORE_INDEX  # the previous example's last token predicts nothing here
            seen.append(tuple(p["input_ids"][start:start + n]))
            start += n
    assert sorted(seen) == sorted(tuple(f["input_ids"]) for f in features)
    with pytest.raises(ValueError, match="max_length"):
        pack(features, max_length=5)


def test_segment_mask_is_block_diagonal_causal_and_refuses_a_cache():
    segments = torch.tensor([[1, 1, 2, 2, 2, 0]])
    mask = build_mask(torch.tensor([[1, 1, 1, 1, 1, 0]]), 6, causal=True, segment_ids=segments)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                             [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert mask.equal(expected)
    with pytest.raises(ValueError, match="KV cache"):
        build_mask(None, 1, causal=True, past=3, segment_ids=segments[:, :1])
