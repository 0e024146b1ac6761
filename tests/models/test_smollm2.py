"""The real SmolLM2-135M-Instruct Q4_1 GGUF: loads, tokenizes like transformers' GGUF reader, and knows Paris."""

from __future__ import annotations

import pytest
import torch

from minift.models import load_pretrained
from minift.models.generate import greedy_generate
from minift.models.gguf import load_gguf_tokenizer

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    pytest.importorskip("gguf")
    return load_pretrained(smollm2_gguf), load_gguf_tokenizer(smollm2_gguf)


def test_smollm2_config_and_tied_head(smollm2):
    model, tokenizer = smollm2
    c = model.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size) == (30, 576, 9, 3, 49152)
    assert model.is_tied and model.head.weight is model.get_input_embeddings().weight
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.get_vocab_size() == c.vocab_size


def test_smollm2_greedy_continues_with_paris(smollm2):
    model, tokenizer = smollm2
    ids = torch.tensor([tokenizer.encode(PROMPT).ids])
    out = greedy_generate(model, ids, max_new_tokens=3, eos_token_id=model.config.eos_token_id)
    continuation = tokenizer.decode(out[0, ids.shape[1]:].tolist())
    assert continuation.startswith(" Paris"), continuation


def test_smollm2_tokenizer_matches_transformers(smollm2, smollm2_gguf):
    transformers = pytest.importorskip("transformers")
    _, tokenizer = smollm2
    reference = transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    texts = [PROMPT, "Hello, world! It's a <|im_start|>user\nfine day\t ok", "naïve café – déjà vu 🙂"]
    for text in texts:
        ids = tokenizer.encode(text).ids
        assert ids == reference(text, add_special_tokens=False)["input_ids"], text
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
