"""Parity of our GPT-2, GPT-Neo and Llama with transformers on tiny random checkpoints (fp32, CPU, padded batch).

Each test builds a 2-layer, width-32, vocab-100 model with transformers, saves it with safetensors, loads the
folder with ``minift.models.load_pretrained`` and compares outputs on a batch with right and left padding.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from minift.models import load_pretrained, save_pretrained
from minift.models.rope import rope_inv_freq

VOCAB, T = 100, 12
LLAMA = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0}
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


def _batch(right_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, T) ids with row 1 right-padded and row 2 left-padded (pad id 0)."""
    ids = torch.randint(3, VOCAB, (3, T))
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, 8:] = 0
    if not right_only:
        mask[2, :4] = 0
    return ids.masked_fill(mask == 0, 0), mask


def _save(hf_model, folder, config_edit=None):
    hf_model.save_pretrained(folder, safe_serialization=True)
    if config_edit is not None:
        path = folder / "config.json"
        path.write_text(json.dumps(config_edit(json.loads(path.read_text()))))
    return folder


def _compare(hf_model, ours, ids, mask):
    hf_model.eval()
    with torch.no_grad():
        expected = hf_model(input_ids=ids, attention_mask=mask).logits
        got = ours(input_ids=ids, attention_mask=mask)
    assert got.shape == expected.shape
    if got.dim() == 3:  # per-token logits: padded positions are garbage in both, compare real tokens
        keep = mask.bool()
        got, expected = got[keep], expected[keep]
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def _gpt2_config():
    return transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2)


def test_gpt2_lm_parity(tmp_path):
    hf = transformers.GPT2LMHeadModel(_gpt2_config())
    ours = load_pretrained(_save(hf, tmp_path))
    assert ours.head_kind == "causal-lm" and ours.is_tied
    assert ours.head.weight is ours.get_input_embeddings().weight
    assert set(ours.state_dict()) == set(hf.state_dict())
    _compare(hf, ours, *_batch())


def test_gpt2_scale_attn_by_inverse_layer_idx_parity(tmp_path):
    config = _gpt2_config()
    config.scale_attn_by_inverse_layer_idx = True
    hf = transformers.GPT2LMHeadModel(config)
    _compare(hf, load_pretrained(_save(hf, tmp_path)), *_batch())


def test_gpt2_sequence_classification_parity(tmp_path):
    hf = transformers.GPT2ForSequenceClassification(_gpt2_config())
    with torch.no_grad():
        hf.score.weight.normal_(0, 1.0)  # make the head matter
    ours = load_pretrained(_save(hf, tmp_path), head="classification")
    assert ours.fresh_keys == []
    # HF pools the last non-pad *id*; ours the last attended position: the same on right padding.
    _compare(hf, ours, *_batch(right_only=True))


def test_gpt2_save_roundtrip_transformers_loads(tmp_path):
    hf = transformers.GPT2LMHeadModel(_gpt2_config())
    ours = load_pretrained(_save(hf, tmp_path / "a"))
    save_pretrained(ours, tmp_path / "b")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "b")
    _compare(reloaded, ours, *_batch())


def test_gpt_neo_local_window_parity(tmp_path):
    config = transformers.GPTNeoConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                       max_position_embeddings=64, attention_types=[[["global", "local"], 1]],
                                       window_size=4, pad_token_id=0)
    hf = transformers.GPTNeoForCausalLM(config)
    ours = load_pretrained(_save(hf, tmp_path))
    assert [b.attention_type for b in ours.blocks] == ["global", "local"]
    assert ours.blocks[1].attn.attention.q_proj.bias is None
    _compare(hf, ours, *_batch())


def test_gpt_neo_sequence_classification_parity(tmp_path):
    config = transformers.GPTNeoConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                       max_position_embeddings=64, attention_types=[[["global", "local"], 1]],
                                       window_size=4, pad_token_id=0, num_labels=3)
    hf = transformers.GPTNeoForSequenceClassification(config)
    with torch.no_grad():
        hf.score.weight.normal_(0, 1.0)
    ours = load_pretrained(_save(hf, tmp_path), head="classification")
    assert ours.fresh_keys == []
    _compare(hf, ours, *_batch(right_only=True))


def test_gpt_neo_window_matters(tmp_path):
    """The local layer's window is really applied: a wide window gives different logits than window 4."""
    config = transformers.GPTNeoConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                                       max_position_embeddings=64, attention_types=[[["local"], 2]], window_size=4)
    hf = transformers.GPTNeoForCausalLM(config)
    ours = load_pretrained(_save(hf, tmp_path))
    ids, _ = _batch()
    with torch.no_grad():
        narrow = ours(input_ids=ids)
        ours.backbone.window_size = T
        wide = ours(input_ids=ids)
    assert torch.allclose(narrow[:, :4], wide[:, :4], atol=1e-6)  # first positions see < 4 keys either way
    assert not torch.allclose(narrow[:, 4:], wide[:, 4:], atol=1e-3)


@pytest.mark.parametrize("tie", [False, True])
def test_llama_gqa_parity(tmp_path, tie):
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA, tie_word_embeddings=tie))
    ours = load_pretrained(_save(hf, tmp_path))
    assert ours.is_tied == tie
    assert (ours.head.weight is ours.get_input_embeddings().weight) == tie
    assert ours.blocks[0].self_attn.k_proj.out_features == 2 * 8
    _compare(hf, ours, *_batch())


def test_llama_biases_and_head_dim_parity(tmp_path):
    config = transformers.LlamaConfig(**LLAMA, attention_bias=True, mlp_bias=True, head_dim=16)
    hf = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    ours = load_pretrained(_save(hf, tmp_path))
    assert ours.blocks[0].self_attn.q_proj.out_features == 4 * 16
    _compare(hf, ours, *_batch())


def _to_4x(d: dict) -> dict:
    """The transformers 4.x form of a 5.x Llama config dict: rope_theta + rope_scaling (with 4.x's "type")."""
    d = dict(d)
    params = dict(d.pop("rope_parameters"))
    d["rope_theta"] = params.pop("rope_theta")
    rope_type = params.pop("rope_type", "default")
    d["rope_scaling"] = None if rope_type == "default" else {"type": rope_type, **params}
    return d


@pytest.mark.parametrize("form", ["5.x", "4.x"])
@pytest.mark.parametrize("rope", [LLAMA3_ROPE, {"rope_type": "linear", "factor": 2.0}, None],
                         ids=["llama3", "linear", "default"])
def test_llama_rope_configs_parity(tmp_path, form, rope):
    rope_parameters = {"rope_theta": 500.0, **(rope or {"rope_type": "default"})}
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA, rope_parameters=rope_parameters))
    written = json.loads((_save(hf, tmp_path) / "config.json").read_text())
    assert "rope_parameters" in written  # the installed transformers writes the 5.x form
    if form == "4.x":
        _save(hf, tmp_path, _to_4x)
        assert "rope_parameters" not in json.loads((tmp_path / "config.json").read_text())
    ours = load_pretrained(tmp_path)
    assert ours.config.rope_theta == 500.0
    _compare(hf, ours, *_batch())


def test_llama_dynamic_rope_parity_beyond_max_positions(tmp_path):
    """Dynamic NTK only changes RoPE past max_position_embeddings: a sequence of 12 with 8 positions."""
    rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    config = transformers.LlamaConfig(**{**LLAMA, "max_position_embeddings": 8}, rope_parameters=rope_parameters)
    hf = transformers.LlamaForCausalLM(config)
    ours = load_pretrained(_save(hf, tmp_path))
    _compare(hf, ours, *_batch())


def test_rope_inv_freq_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for rope in (LLAMA3_ROPE, {"rope_type": "linear", "factor": 4.0}, {"rope_type": "dynamic", "factor": 2.0}):
        config = transformers.LlamaConfig(**LLAMA, rope_parameters={"rope_theta": 10000.0, **rope})
        expected, _ = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, "cpu", seq_len=100)
        got = rope_inv_freq(8, 10000.0, rope, 64, seq_len=100)
        torch.testing.assert_close(got, expected)


def test_llama_sequence_classification_parity(tmp_path):
    hf = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(**LLAMA, num_labels=3))
    with torch.no_grad():
        hf.score.weight.normal_(0, 1.0)
    ours = load_pretrained(_save(hf, tmp_path), head="classification")
    assert ours.config.num_labels == 3 and ours.head.bias is None
    _compare(hf, ours, *_batch(right_only=True))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neo", "llama"])
def test_decoder_token_classification_parity(tmp_path, family):
    if family == "gpt2":
        hf = transformers.GPT2ForTokenClassification(transformers.GPT2Config(**_gpt2_config().to_dict(), num_labels=5))
    elif family == "gpt_neo":
        hf = transformers.GPTNeoForTokenClassification(transformers.GPTNeoConfig(
            vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
            attention_types=[[["global", "local"], 1]], window_size=4, num_labels=5))
    else:
        hf = transformers.LlamaForTokenClassification(transformers.LlamaConfig(**LLAMA, num_labels=5))
    head = hf.classifier if family != "llama" else hf.score
    with torch.no_grad():
        head.bias.normal_(0, 1.0)
    ours = load_pretrained(_save(hf, tmp_path), head="token-classification")
    assert ours.fresh_keys == [] and ours.head.bias is not None
    _compare(hf, ours, *_batch())


def test_decoder_lm_checkpoint_gets_fresh_score_head(tmp_path):
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    ours = load_pretrained(_save(hf, tmp_path), head="classification", num_labels=5)
    assert ours.fresh_keys == ["score.weight"]
    ids, mask = _batch(right_only=True)
    with torch.no_grad():
        out = ours(input_ids=ids, attention_mask=mask)
        hidden = ours.backbone(input_ids=ids, attention_mask=mask)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out[1], ours.head(hidden[1, 7]))  # row 1's last real token is position 7


def test_left_padding_matches_unpadded(tmp_path):
    """A left-padded row gives the same last-token logits as the same tokens without padding (RoPE is
    relative, so the shift does not matter) and no NaN anywhere."""
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    ours = load_pretrained(_save(hf, tmp_path))
    ids, mask = _batch()
    with torch.no_grad():
        padded = ours(input_ids=ids, attention_mask=mask)
        alone = ours(input_ids=ids[2:, 4:])
    assert not torch.isnan(padded).any()
    torch.testing.assert_close(padded[2, -1], alone[0, -1], atol=1e-4, rtol=0)


def test_gradient_checkpointing_same_grads(tmp_path):
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    ours = load_pretrained(_save(hf, tmp_path))
    ids, mask = _batch()
    grads = []
    for flag in (False, True):
        ours.zero_grad()
        ours.gradient_checkpointing = flag
        ours(input_ids=ids, attention_mask=mask).sum().backward()
        grads.append(ours.blocks[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_inputs_embeds_equals_input_ids(tmp_path):
    hf = transformers.GPT2LMHeadModel(_gpt2_config())
    ours = load_pretrained(_save(hf, tmp_path))
    ids, mask = _batch()
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask)
        b = ours(inputs_embeds=ours.get_input_embeddings()(ids), attention_mask=mask)
    torch.testing.assert_close(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["gpt2", "gpt_neo", "llama"])
def test_decoders_on_cuda_match_cpu(tmp_path, family):
    """Same logits on the GPU (fp32), and finite bf16 logits with left padding (fully masked rows)."""
    if family == "gpt2":
        hf = transformers.GPT2LMHeadModel(_gpt2_config())
    elif family == "gpt_neo":
        hf = transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(
            vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64,
            attention_types=[[["global", "local"], 1]], window_size=4))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA, rope_parameters=LLAMA3_ROPE | {
            "rope_theta": 500.0}))
    _save(hf, tmp_path)
    ids, mask = _batch()
    keep = mask.bool()
    with torch.no_grad():
        cpu = load_pretrained(tmp_path)(input_ids=ids, attention_mask=mask)
        gpu = load_pretrained(tmp_path, device="cuda")(input_ids=ids.cuda(), attention_mask=mask.cuda()).cpu()
        half = load_pretrained(tmp_path, device="cuda", dtype=torch.bfloat16)(
            input_ids=ids.cuda(), attention_mask=mask.cuda()).float().cpu()
    torch.testing.assert_close(gpu[keep], cpu[keep], atol=1e-3, rtol=0)
    assert torch.isfinite(half).all()
    assert (half[keep] - cpu[keep]).abs().max() < 0.1
