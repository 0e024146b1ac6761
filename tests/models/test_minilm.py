"""The real MiniLM-L6-H384 checkpoint: parity with transformers and sensible sentence embeddings."""
import pytest
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer

from minift.models import load_pretrained

pytestmark = pytest.mark.slow

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The quarterly report shows rising interest rates for mortgages.",
]


def encode(folder, texts):
    """Token ids and attention mask, right-padded, with the file's own padding/truncation switched off."""
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encodings = [tokenizer.encode(t) for t in texts]
    T = max(len(e.ids) for e in encodings)
    ids = torch.zeros(len(texts), T, dtype=torch.long)  # [PAD] = 0
    mask = torch.zeros(len(texts), T, dtype=torch.long)
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        mask[i, : len(e.ids)] = 1
    return ids, mask


def test_minilm_matches_transformers(minilm_dir):
    ids, mask = encode(minilm_dir, SENTENCES)
    assert mask.sum(1).tolist() != [ids.shape[1]] * 3  # the batch really is padded
    ours = load_pretrained(minilm_dir)
    assert ours.skipped_keys == ["bert.embeddings.position_ids"] and ours.fresh_keys == []
    theirs = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_minilm_embeddings_rank_paraphrase_above_unrelated(minilm_dir):
    ids, mask = encode(minilm_dir, SENTENCES)
    model = load_pretrained(minilm_dir)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask)  # (B, T, C)
    m = mask[..., None].float()
    embeddings = F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)  # mean pooling, as sentence-transformers
    paraphrase = (embeddings[0] @ embeddings[1]).item()
    unrelated = (embeddings[0] @ embeddings[2]).item()
    assert paraphrase > unrelated + 0.2, (paraphrase, unrelated)
