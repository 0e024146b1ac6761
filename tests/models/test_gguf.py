"""GGUF loading: a tiny Llama written as llama.cpp does (gguf.GGUFWriter, Q/K permuted) must give the
transformers model's logits, and load in transformers' own GGUF reader the same way (so the file we write is
a faithful llama.cpp file, not just one our reader agrees with)."""

from __future__ import annotations

import json

import kit
import numpy as np
import pytest
import torch
import transformers

from minift.models import CheckpointError, ModelLoadError, load_pretrained
from minift.models.gguf import load_gguf, load_gguf_tokenizer, permute_qk, unpermute_qk

gguf = pytest.importorskip("gguf")

# the kit's tiny Llama with room for the trained tokenizer's 300 tokens, and llama.cpp's special ids
LLAMA = {"vocab_size": 300, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
TEXT = ["the cat sat on the mat", "a dog ran in the park", "hello world, the end!"]


def _train_tokenizer():
    """A small byte-level BPE tokenizer (the reference the GGUF tokenizer must reproduce)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT * 20, trainer)
    return tok


def _hf_tensor_name(key: str) -> str:
    if key == "model.embed_tokens.weight":
        return "token_embd.weight"
    if key == "model.norm.weight":
        return "output_norm.weight"
    if key == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = key.split(".", 3)
    module, param = rest.rsplit(".", 1)
    return f"blk.{i}.{HF_TO_GGUF[module]}.{param}"


def _add_byte_level_tokenizer(w, tokenizer) -> None:
    """tokenizer.ggml.* metadata of a byte-level BPE ``tokenizers.Tokenizer`` (as convert_hf_to_gguf.py)."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(tokenizer.to_str())["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in ("<unk>", "<s>", "</s>") else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_add_bos_token(False)


def write_gguf(hf_model, path, tokenizer, quant: str = "F32", rope_freqs: torch.Tensor | None = None) -> None:
    """Write ``hf_model`` as llama.cpp's convert_hf_to_gguf.py does (metadata, permuted Q/K, names).

    ``tokenizer``: a byte-level BPE ``tokenizers.Tokenizer``, or a function writing tokenizer metadata.
    """
    c = hf_model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    if callable(tokenizer):
        tokenizer(w)  # writes its own tokenizer.ggml.* metadata
    else:
        _add_byte_level_tokenizer(w, tokenizer)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    if rope_freqs is not None:  # llama3 rope: convert_hf_to_gguf.py stores per-frequency divisors
        w.add_tensor("rope_freqs.weight", rope_freqs.numpy())
    for key, tensor in hf_model.state_dict().items():
        if key == "lm_head.weight" and c.tie_word_embeddings:
            continue
        t = tensor.detach().float()
        if key.endswith("q_proj.weight"):
            t = permute_qk(t, c.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            t = permute_qk(t, c.num_key_value_heads)
        array = t.numpy()
        if quant == "Q8_0" and array.ndim == 2:
            qtype = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(_hf_tensor_name(key), gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(_hf_tensor_name(key), array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _llama(**overrides):
    return kit.hf_model("llama", "causal-lm", **LLAMA, **overrides)


def _batch():
    b = kit.batch("llama", vocab=LLAMA["vocab_size"], padding="mixed")  # row 1 right-, row 2 left-padded
    return b["input_ids"], b["attention_mask"]


def test_permutation_matches_llama_cpp_and_inverts():
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(16, 3)  # 2 heads of 8 rows
    # llama.cpp's permute, written as in convert_hf_to_gguf.py
    expected = w.reshape(2, 2, 8 // 2, 3).swapaxes(1, 2).reshape(w.shape)
    torch.testing.assert_close(permute_qk(w, 2), expected)
    torch.testing.assert_close(unpermute_qk(permute_qk(w, 2), 2), w)
    assert not torch.equal(permute_qk(w, 2), w)


@pytest.mark.parametrize(("tie", "quant"), [(False, "F32"), (True, "F32"), (False, "Q8_0")])
def test_tiny_gguf_matches_transformers(tmp_path, tie, quant):
    hf = _llama(tie_word_embeddings=tie)
    path = tmp_path / "tiny.gguf"
    write_gguf(hf, path, _train_tokenizer(), quant)
    ours = load_pretrained(path)  # load_pretrained dispatches .gguf to load_gguf
    assert ours.config.num_kv_heads == 2 and ours.is_tied == tie
    ids, mask = _batch()
    keep = mask.bool()
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask)[keep]
        # transformers' own GGUF reader on the same file: the file is a faithful llama.cpp file
        reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf").eval()
        from_file = reference(input_ids=ids, attention_mask=mask).logits[keep]
        original = hf(input_ids=ids, attention_mask=mask).logits[keep]
    torch.testing.assert_close(got, from_file, atol=1e-4, rtol=0)
    if quant == "F32":
        torch.testing.assert_close(got, original, atol=1e-4, rtol=0)
    else:  # Q8_0 is lossy: close to the original, but not equal
        assert (got - original).abs().max() < 0.05


def test_gguf_llama3_rope_freqs(tmp_path):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    hf = _llama(rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf.config, "cpu")
    base = 1.0 / (10000.0 ** (torch.arange(0, 8, 2).float() / 8))
    assert not torch.allclose(scaled, base)
    write_gguf(hf, tmp_path / "tiny.gguf", _train_tokenizer(), rope_freqs=base / scaled)
    ours = load_gguf(tmp_path / "tiny.gguf")
    ids, mask = _batch()
    keep = mask.bool()
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask)[keep]
        expected = hf(input_ids=ids, attention_mask=mask).logits[keep]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_gguf_package_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # makes `import gguf` raise ImportError
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match=r'pip install "minift\[gguf\]"'):
        load_pretrained(tmp_path / "x.gguf")


def test_gguf_classification_head_is_fresh(tmp_path):
    hf = _llama()
    write_gguf(hf, tmp_path / "tiny.gguf", _train_tokenizer())
    model = load_gguf(tmp_path / "tiny.gguf", head="classification", num_labels=3)
    assert model.fresh_keys == ["score.weight"] and model.skipped_keys == ["lm_head.weight"]
    ids, mask = _batch()
    assert model(input_ids=ids, attention_mask=mask).shape == (3, 3)


def test_gguf_dtype(tmp_path):
    hf = _llama()
    write_gguf(hf, tmp_path / "tiny.gguf", _train_tokenizer())
    model = load_gguf(tmp_path / "tiny.gguf", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_gguf_tokenizer_reproduces_original(tmp_path):
    original = _train_tokenizer()
    hf = _llama()
    write_gguf(hf, tmp_path / "tiny.gguf", original)
    tok = load_gguf_tokenizer(tmp_path / "tiny.gguf")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    for text in [*TEXT, "the parks sat, hello!  end", "</s> the cat</s>"]:
        ids = tok.encode(text).ids
        assert ids == original.encode(text).ids
        assert ids == reference(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.token_to_id("</s>") == 2 and tok.encode("</s>").ids == [2]


def test_gguf_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_gguf(tmp_path / "absent.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 7)
    with pytest.raises(CheckpointError, match="truncated or not a GGUF"):
        load_gguf(bad)
    hf = _llama()
    path = tmp_path / "tiny.gguf"
    write_gguf(hf, path, _train_tokenizer())
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        load_gguf(truncated)


def test_gguf_unsupported_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="architecture 'mamba' is not supported"):
        load_gguf(tmp_path / "x.gguf")


def _sentencepiece_metadata(w) -> None:
    """tokenizer.ggml.* of a small SentencePiece-style BPE vocabulary (Llama 2 layout: <unk> <s> </s>, 256 byte
    tokens, then pieces scored by merge order), trained here on TEXT."""
    from tokenizers import SentencePieceBPETokenizer

    trained = SentencePieceBPETokenizer()
    trained.train_from_iterator(TEXT * 20, vocab_size=60, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    vocab = trained.get_vocab()
    pieces = [t for t in sorted(vocab, key=vocab.get) if t not in ("<unk>", "<s>", "</s>")]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))
    w.add_add_bos_token(True)


def test_gguf_sentencepiece_tokenizer_matches_transformers(tmp_path):
    hf = _llama()
    write_gguf(hf, tmp_path / "spm.gguf", _sentencepiece_metadata)
    tok = load_gguf_tokenizer(tmp_path / "spm.gguf")
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="spm.gguf")
    for text in [*TEXT, "the parks sat, hello!  end", "Zebras éat the mat</s>", " leading space"]:
        ids = tok.encode(text).ids
        assert ids == reference(text)["input_ids"], text
        assert ids[0] == 1  # BOS prepended
        assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    assert tok.decode(tok.encode("Zebras éat the mat").ids) == "Zebras éat the mat"  # byte fallback round trip
    assert any(i > 258 and len(tok.id_to_token(i)) > 2 for i in tok.encode("the cat sat").ids)  # merges used
