"""GGUF out (minift.models.gguf_write): a tiny Llama and Qwen2 written by transformers, with a byte-level BPE
tokenizer, LoRA with a non-zero update merged, written as GGUF and read back by minift and by transformers' own
GGUF reader (``from_pretrained(folder, gguf_file=...)``) with the same logits: exactly in f32, within the measured
tolerance of the cast in f16 and q8_0. The real SmolLM2 round trip is in ``test_gguf_write_smollm2.py``."""
from __future__ import annotations

import json

import kit
import pytest
import torch

from minift.models import load_pretrained
from minift.models.gguf import load_gguf_tokenizer
from minift.models.gguf_write import (
    GGUFWriteError,
    check_writable,
    gguf_tensors,
    pre_tokenizer_name,
    vocab_from_gguf,
    vocab_from_tokenizer,
    write_gguf,
)
from minift.peft import apply, merge
from minift.peft.export import plain_linears

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

# room for the tokenizer's tokens plus llama.cpp's [PAD<i>] rows; the special ids of SmolLM-style models
IDS = {"vocab_size": 320, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
FAMILIES = {"llama": {}, "qwen2": {"use_sliding_window": False}}  # llama untied, qwen2 tied with q/k/v biases
TEXT = ["the cat sat on the mat", "a dog ran in the park 12345", "hello world, the end!"]
# Largest logit difference to the fp32 model, as measured on these models (logits of about ±0.3 here; measured
# 1.5e-4 for f16 and 4.4e-3 for q8_0, the same in minift and transformers, which dequantize the same bytes).
TOLERANCE = {"f32": 0.0, "f16": 5e-4, "q8_0": 1.5e-2}


def train_tokenizer(digits: bool = False):
    """A byte-level BPE tokenizer trained on ``TEXT`` (SmolLM's digit split when ``digits``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False)]
    if digits:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps) if digits else steps[0]
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=290, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT * 20, trainer)
    return tok


@pytest.fixture
def decoder(tiny):
    """Factory: (minift model, the HF folder with its tokenizer.json, the tokenizer) of a tiny ``family``."""

    def make(family, **overrides):
        made = tiny(family, "causal-lm", **IDS, **FAMILIES[family], **overrides)
        tokenizer = train_tokenizer()
        tokenizer.save(str(made.folder / "tokenizer.json"))
        return made.load(), made.folder, tokenizer

    return make


def _batch():
    b = kit.batch("llama", B=3, T=9, vocab=IDS["vocab_size"], padding="left")
    return b["input_ids"], b["attention_mask"]


def _lora_merged(model):
    """LoRA on every attention and MLP projection with a non-zero B, merged and swapped to plain linears."""
    model = apply(model, "lora", r=4, alpha=8, targets=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)
    return merge(model.eval())


def _logits(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return getattr(out, "logits", out)[mask.bool()]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_round_trip_with_merged_lora(decoder, tmp_path, family, dtype):
    model, _, tokenizer = decoder(family)
    ids, mask = _batch()
    base = _logits(model, ids, mask)
    model = _lora_merged(model)
    expected = _logits(model, ids, mask)
    assert (expected - base).abs().max() > 1e-2  # the update matters
    path = tmp_path / f"{family}-{dtype}.gguf"
    with plain_linears(model):
        write_gguf(model, path, vocab_from_tokenizer(tokenizer, model.config), dtype)
    ours = load_pretrained(path)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name).eval()
    assert ours.is_tied == model.is_tied and ours.config.num_kv_heads == 2
    for got in (_logits(ours, ids, mask), _logits(theirs, ids, mask)):
        torch.testing.assert_close(got, expected, atol=TOLERANCE[dtype], rtol=0)


def test_file_layout_is_llama_cpps(decoder, tmp_path):
    model, _, tokenizer = decoder("llama")
    path = write_gguf(model, tmp_path / "m.gguf", vocab_from_tokenizer(tokenizer, model.config), "q8_0")
    reader = gguf.GGUFReader(str(path))
    meta = {key: field.contents() for key, field in reader.fields.items()}
    c = model.config
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert (meta["llama.block_count"], meta["llama.embedding_length"], meta["llama.feed_forward_length"],
            meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"], meta["llama.context_length"],
            meta["llama.rope.dimension_count"]) == (2, 32, 64, 4, 2, 64, 8)
    assert meta["llama.rope.freq_base"] == pytest.approx(c.rope_theta)
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.layer_norm_eps)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == types["output.weight"] == "Q8_0"
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == 320 and tokens[-1] == "[PAD319]" and meta["tokenizer.ggml.token_type"][-1] == 5
    assert meta["tokenizer.ggml.token_type"][tokens.index("<|im_end|>")] == 3  # a special token is a control one
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "gpt2")
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert not meta["tokenizer.ggml.add_bos_token"]


def test_tensors_are_permuted_as_llama_cpp_does(decoder):
    model, _, _ = decoder("llama")
    tensors = dict(gguf_tensors(model))
    q = model.state_dict()["model.layers.1.self_attn.q_proj.weight"]
    # convert_hf_to_gguf.py's permute: per head, the two rotary halves interleaved
    expected = q.reshape(4, 2, 4, 32).swapaxes(1, 2).reshape(q.shape)
    torch.testing.assert_close(tensors["blk.1.attn_q.weight"], expected)
    assert "output.weight" in tensors and len(tensors) == len(model.state_dict())


def test_qwen2_is_not_permuted_and_tied_head_left_out(decoder):
    model, _, _ = decoder("qwen2")
    tensors = dict(gguf_tensors(model))
    torch.testing.assert_close(tensors["blk.0.attn_k.bias"], model.state_dict()["model.layers.0.self_attn.k_proj.bias"])
    assert "output.weight" not in tensors


@pytest.mark.parametrize("digits", [False, True])
def test_tokenizer_round_trip(decoder, tmp_path, digits):
    model, _, _ = decoder("llama")
    tokenizer = train_tokenizer(digits)
    path = write_gguf(model, tmp_path / "t.gguf", vocab_from_tokenizer(tokenizer, model.config, "{{ x }}"), "f16")
    assert pre_tokenizer_name(json.loads(tokenizer.to_str())["pre_tokenizer"]) == ("smollm" if digits else "gpt2")
    rebuilt = load_gguf_tokenizer(path)
    for text in [*TEXT, "new words 2024 <|im_start|>user\nhi<|im_end|>"]:
        assert rebuilt.encode(text).ids == tokenizer.encode(text).ids, text
    assert gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"].contents() == "{{ x }}"


def test_vocab_copied_from_a_gguf(decoder, tmp_path):
    model, _, tokenizer = decoder("llama")
    first = write_gguf(model, tmp_path / "a.gguf", vocab_from_tokenizer(tokenizer, model.config), "f32")
    second = write_gguf(model, tmp_path / "b.gguf", vocab_from_gguf(first), "f32")
    fields = [{k: f.contents() for k, f in gguf.GGUFReader(str(p)).fields.items() if k.startswith("tokenizer.")}
              for p in (first, second)]
    assert fields[0] == fields[1]


def test_llama3_rope_scaling_written_as_rope_freqs(decoder, tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    model, _, tokenizer = decoder("llama", rope_scaling=scaling)
    path = write_gguf(model, tmp_path / "r.gguf", vocab_from_tokenizer(tokenizer, model.config), "f32")
    ids, mask = _batch()
    torch.testing.assert_close(_logits(load_pretrained(path), ids, mask), _logits(model, ids, mask))


def test_refusals_say_why(decoder, tiny, tmp_path):
    model, _, tokenizer = decoder("llama")
    vocab = vocab_from_tokenizer(tokenizer, model.config)
    with pytest.raises(GGUFWriteError, match="nn.Linear first"):  # unmerged LoRA keys are named
        write_gguf(apply(model, "lora", r=2), tmp_path / "x.gguf", vocab)
    assert not list(tmp_path.glob("*.gguf*"))  # nothing half-written is left
    with pytest.raises(GGUFWriteError, match="'classification' head"):
        check_writable(tiny("llama", "classification").load())
    with pytest.raises(GGUFWriteError, match="'bert'"):
        check_writable(tiny("bert", "classification").load())
    windowed = tiny("qwen2", "causal-lm").load()  # the kit's Qwen2 has a sliding-window layer
    with pytest.raises(GGUFWriteError, match="sliding window"):
        check_writable(windowed)
    with pytest.raises(GGUFWriteError, match="dtype"):
        write_gguf(model, tmp_path / "x.gguf", vocab, "q4_0")
