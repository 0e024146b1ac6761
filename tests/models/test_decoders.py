"""Parity of our GPT-2, GPT-Neo and Llama with transformers on tiny random checkpoints (fp32, CPU, padded batch).

Each test builds a tiny model with transformers (the ``tiny`` fixture: 2 layers, width 32, vocab 100, saved with
safetensors), loads the folder with minift and compares outputs on a batch with right and left padding.
"""

from __future__ import annotations

import json

import kit
import pytest
import torch
import transformers

from minift.models import save_pretrained
from minift.models.rope import rope_inv_freq

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}


def _compare(hf_model, ours, batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
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


def test_gpt2_lm_parity(tiny, tiny_batch):
    t = tiny("gpt2", "causal-lm")
    ours = t.load(head=None)  # a decoder's default head
    assert ours.head_kind == "causal-lm" and ours.is_tied
    assert ours.head.weight is ours.get_input_embeddings().weight
    assert set(ours.state_dict()) == set(t.hf.state_dict())
    _compare(t.hf, ours, tiny_batch("gpt2", padding="mixed"))


def test_gpt2_scale_attn_by_inverse_layer_idx_parity(tiny, tiny_batch):
    t = tiny("gpt2", "causal-lm", scale_attn_by_inverse_layer_idx=True)
    _compare(t.hf, t.load(), tiny_batch("gpt2", padding="mixed"))


def test_gpt2_sequence_classification_parity(tiny, tiny_batch):
    t = tiny("gpt2", "classification")
    ours = t.load()
    assert ours.fresh_keys == []
    # HF pools the last non-pad *id*; ours the last attended position: the same on right padding.
    _compare(t.hf, ours, tiny_batch("gpt2", padding="right"))


def test_gpt2_save_roundtrip_transformers_loads(tiny, tiny_batch, tmp_path):
    ours = tiny("gpt2", "causal-lm").load()
    save_pretrained(ours, tmp_path / "b")
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "b")
    _compare(reloaded, ours, tiny_batch("gpt2", padding="mixed"))


def test_gpt_neo_local_window_parity(tiny, tiny_batch):
    t = tiny("gpt_neo", "causal-lm")
    ours = t.load()
    assert [b.attention_type for b in ours.blocks] == ["global", "local"]
    assert ours.blocks[1].attn.attention.q_proj.bias is None
    _compare(t.hf, ours, tiny_batch("gpt_neo", padding="mixed"))


def test_gpt_neo_sequence_classification_parity(tiny, tiny_batch):
    t = tiny("gpt_neo", "classification")
    ours = t.load()
    assert ours.fresh_keys == []
    _compare(t.hf, ours, tiny_batch("gpt_neo", padding="right"))


def test_gpt_neo_window_matters(tiny, tiny_batch):
    """The local layer's window is really applied: a wide window gives different logits than window 4."""
    ours = tiny("gpt_neo", "causal-lm", attention_types=[[["local"], 2]], window_size=4).load()
    ids = tiny_batch("gpt_neo", padding="mixed")["input_ids"]
    with torch.no_grad():
        narrow = ours(input_ids=ids)
        ours.backbone.window_size = ids.shape[1]
        wide = ours(input_ids=ids)
    assert torch.allclose(narrow[:, :4], wide[:, :4], atol=1e-6)  # first positions see < 4 keys either way
    assert not torch.allclose(narrow[:, 4:], wide[:, 4:], atol=1e-3)


@pytest.mark.parametrize("tie", [False, True])
def test_llama_gqa_parity(tiny, tiny_batch, tie):
    t = tiny("llama", "causal-lm", tie_word_embeddings=tie)
    ours = t.load()
    assert ours.is_tied == tie
    assert (ours.head.weight is ours.get_input_embeddings().weight) == tie
    assert ours.blocks[0].self_attn.k_proj.out_features == 2 * 8
    _compare(t.hf, ours, tiny_batch("llama", padding="mixed"))


def test_llama_biases_and_head_dim_parity(tiny, tiny_batch):
    t = tiny("llama", "causal-lm", attention_bias=True, mlp_bias=True, head_dim=16)
    with torch.no_grad():
        for name, p in t.hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    ours = t.save().load()  # with the non-zero biases
    assert ours.blocks[0].self_attn.q_proj.out_features == 4 * 16
    _compare(t.hf, ours, tiny_batch("llama", padding="mixed"))


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
def test_llama_rope_configs_parity(tiny, tiny_batch, form, rope):
    rope_parameters = {"rope_theta": 500.0, **(rope or {"rope_type": "default"})}
    t = tiny("llama", "causal-lm", rope_parameters=rope_parameters)
    written = json.loads((t.folder / "config.json").read_text())
    assert "rope_parameters" in written  # the installed transformers writes the 5.x form
    if form == "4.x":
        kit.edit_config(t.folder, _to_4x)
        assert "rope_parameters" not in json.loads((t.folder / "config.json").read_text())
    ours = t.load()
    assert ours.config.rope_theta == 500.0
    _compare(t.hf, ours, tiny_batch("llama", padding="mixed"))


def test_llama_dynamic_rope_parity_beyond_max_positions(tiny, tiny_batch):
    """Dynamic NTK only changes RoPE past max_position_embeddings: a sequence of 12 with 8 positions."""
    rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    t = tiny("llama", "causal-lm", max_position_embeddings=8, rope_parameters=rope_parameters)
    _compare(t.hf, t.load(), tiny_batch("llama", T=12, padding="mixed"))


def test_rope_inv_freq_matches_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for rope in (LLAMA3_ROPE, {"rope_type": "linear", "factor": 4.0}, {"rope_type": "dynamic", "factor": 2.0}):
        config = kit.hf_config("llama", rope_parameters={"rope_theta": 10000.0, **rope})
        expected, _ = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, "cpu", seq_len=100)
        got = rope_inv_freq(8, 10000.0, rope, 64, seq_len=100)
        torch.testing.assert_close(got, expected)


def test_llama_sequence_classification_parity(tiny, tiny_batch):
    t = tiny("llama", "classification", num_labels=3)
    ours = t.load()
    assert ours.config.num_labels == 3 and ours.head.bias is None
    _compare(t.hf, ours, tiny_batch("llama", padding="right"))


@pytest.mark.parametrize("family", kit.DECODERS)
def test_decoder_token_classification_parity(tiny, tiny_batch, family):
    t = tiny(family, "token-classification", num_labels=5)  # the head's bias is drawn non-zero
    ours = t.load()
    assert ours.fresh_keys == [] and ours.head.bias is not None
    _compare(t.hf, ours, tiny_batch(family, padding="mixed"))


def test_decoder_lm_checkpoint_gets_fresh_score_head(tiny, tiny_batch):
    ours = tiny("llama", "causal-lm").load(head="classification", num_labels=5)
    assert ours.fresh_keys == ["score.weight"]
    b = tiny_batch("llama", padding="right")
    with torch.no_grad():
        out = ours(**b)
        hidden = ours.backbone(**b)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out[1], ours.head(hidden[1, 6]))  # row 1's last real token is position 6


def test_left_padding_matches_unpadded(tiny, tiny_batch):
    """A left-padded row gives the same last-token logits as the same tokens without padding (RoPE is
    relative, so the shift does not matter) and no NaN anywhere."""
    ours = tiny("llama", "causal-lm").load()
    b = tiny_batch("llama", padding="mixed")
    with torch.no_grad():
        padded = ours(**b)
        alone = ours(input_ids=b["input_ids"][2:, 5:])  # row 2 has 5 padding positions on the left
    assert not torch.isnan(padded).any()
    torch.testing.assert_close(padded[2, -1], alone[0, -1], atol=1e-4, rtol=0)


def test_gradient_checkpointing_same_grads(tiny, tiny_batch):
    ours = tiny("llama", "causal-lm").load()
    b = tiny_batch("llama", padding="mixed")
    grads = []
    for flag in (False, True):
        ours.zero_grad()
        ours.gradient_checkpointing = flag
        ours(**b).sum().backward()
        grads.append(ours.blocks[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_inputs_embeds_equals_input_ids(tiny, tiny_batch):
    ours = tiny("gpt2", "causal-lm").load()
    ids, mask = tiny_batch("gpt2", padding="mixed").values()
    with torch.no_grad():
        a = ours(input_ids=ids, attention_mask=mask)
        b = ours(inputs_embeds=ours.get_input_embeddings()(ids), attention_mask=mask)
    torch.testing.assert_close(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("family", kit.DECODERS)
def test_decoders_on_cuda_match_cpu(tiny, tiny_batch, family):
    """Same logits on the GPU (fp32), and finite bf16 logits with left padding (fully masked rows)."""
    overrides = {"llama": {"rope_parameters": LLAMA3_ROPE | {"rope_theta": 500.0}}}.get(family, {})
    t = tiny(family, "causal-lm", **overrides)
    ids, mask = tiny_batch(family, padding="mixed").values()
    keep = mask.bool()
    with torch.no_grad():
        cpu = t.load()(input_ids=ids, attention_mask=mask)
        gpu = t.load(device="cuda")(input_ids=ids.cuda(), attention_mask=mask.cuda()).cpu()
        half = t.load(device="cuda", dtype=torch.bfloat16)(
            input_ids=ids.cuda(), attention_mask=mask.cuda()).float().cpu()
    torch.testing.assert_close(gpu[keep], cpu[keep], atol=1e-3, rtol=0)
    assert torch.isfinite(half).all()
    assert (half[keep] - cpu[keep]).abs().max() < 0.1
