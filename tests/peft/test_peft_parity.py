"""Parity with the reference ``peft`` library (test-only) on tiny random checkpoints.

- the same LoRA weights give the same outputs in minift and in peft (BERT, Llama);
- a minift-exported adapter (``export_peft``) loaded by ``PeftModel.from_pretrained`` gives the same logits
  (every family, classification and LM heads);
- prompt tuning: the same prompt embeddings give the same logits as peft's ``PromptTuningConfig`` (decoders), and an
  exported decoder prompt loads in peft with the same logits;
- ``save_merged`` writes a folder transformers loads with the same logits.
"""
import pytest
import torch

from minift.peft import apply, export_peft, save_merged

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _logits(hf, b):
    with torch.no_grad():
        return hf(**b).logits


def _ours(model, b):
    with torch.no_grad():
        return model(**b)


def _close(got, want, b, per_token):
    if per_token:
        keep = b["attention_mask"].bool()
        got, want = got[keep], want[keep]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def _randomise(model):
    """Non-zero LoRA matrices (B especially: with B = 0 a parity test proves nothing) and a new head."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)


@pytest.mark.parametrize("family, head, task_type", [("bert", "classification", "SEQ_CLS"),
                                                     ("llama", "causal-lm", "CAUSAL_LM")])
def test_same_lora_weights_same_outputs_as_peft(tiny, tiny_batch, family, head, task_type):
    t = tiny(family, head)
    targets = ["query", "value"] if family == "bert" else ["q_proj", "v_proj"]
    reference = peft.get_peft_model(t.hf, peft.LoraConfig(task_type=task_type, r=4, lora_alpha=8,
                                                           target_modules=targets))
    ours = apply(t.load(), "lora", r=4, alpha=8, targets=targets)
    copied = 0
    with torch.no_grad():
        for key, p in reference.named_parameters():
            if ".lora_" in key:
                p.normal_(0, 0.3)
                name = key.removeprefix("base_model.model.").replace(".default.weight", "")
                ours.get_parameter(name).copy_(p)
                copied += 1
    assert copied == 2 * 2 * 2  # 2 layers x 2 targets x (A, B)
    reference.eval()
    b = tiny_batch(family)
    _close(_ours(ours, b), _logits(reference, b), b, head == "causal-lm")


EXPORT_CASES = [("bert", "classification"), ("bert", "token-classification"), ("roberta", "classification"),
                ("gpt2", "causal-lm"), ("gpt2", "classification"), ("gpt_neo", "causal-lm"),
                ("llama", "causal-lm"), ("llama", "classification")]


@pytest.mark.parametrize("family, head", EXPORT_CASES)
def test_exported_adapter_loads_in_peft_with_the_same_logits(tiny, tiny_batch, tmp_path, family, head):
    t = tiny(family, head)
    ours = apply(t.load(), "lora", r=4, alpha=8)
    _randomise(ours)
    folder = export_peft(ours, tmp_path / "exported")
    loaded = peft.PeftModel.from_pretrained(t.hf, folder)
    loaded.eval()
    b = tiny_batch(family)
    _close(_ours(ours, b), _logits(loaded, b), b, head != "classification")
    # the adapter (and head) changed the model: the plain transformers model gives other logits
    plain = type(t.hf).from_pretrained(t.folder).eval()
    assert not torch.allclose(_ours(ours, b), _logits(plain, b), atol=1e-3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prompt_tuning_matches_peft(tiny, tiny_batch, family):
    t = tiny(family, "causal-lm")
    n = 5
    reference = peft.get_peft_model(t.hf, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n))
    reference.eval()
    ours = apply(t.load(), "prompt", length=n)
    with torch.no_grad():
        ours.prompt.embedding.copy_(reference.prompt_encoder["default"].embedding.weight)
    b = tiny_batch(family)
    want = _logits(reference, b)
    assert want.shape[1] == b["input_ids"].shape[1] + n  # peft returns the virtual positions too
    _close(_ours(ours, b), want[:, n:], b, per_token=True)


@pytest.mark.parametrize("family, head, cls", [("bert", "classification", "AutoModelForSequenceClassification"),
                                               ("gpt2", "causal-lm", "AutoModelForCausalLM"),
                                               ("llama", "classification", "AutoModelForSequenceClassification")])
def test_save_merged_folder_loads_in_transformers(tiny, tiny_batch, tmp_path, family, head, cls):
    t = tiny(family, head)
    ours = apply(t.load(), "lora", r=4, alpha=8)
    _randomise(ours)
    before = {n: p.detach().clone() for n, p in ours.state_dict().items()}
    save_merged(ours, tmp_path / "merged")
    after = ours.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)
    assert not any(m.merged for m in ours.modules() if hasattr(m, "merged"))
    loaded = getattr(transformers, cls).from_pretrained(tmp_path / "merged").eval()
    b = tiny_batch(family)
    _close(_ours(ours, b), _logits(loaded, b), b, head == "causal-lm")


@pytest.mark.parametrize("family, head", [("llama", "causal-lm"), ("llama", "classification"),
                                          ("gpt2", "classification")])
def test_exported_prompt_loads_in_peft_with_the_same_logits(tiny, tiny_batch, tmp_path, family, head):
    t = tiny(family, head)
    n = 3
    ours = apply(t.load(), "prompt", length=n)
    _randomise(ours)
    loaded = peft.PeftModel.from_pretrained(t.hf, export_peft(ours, tmp_path / "exported")).eval()
    # transformers' decoder classifiers pool the last non-pad *id*, which inputs_embeds (how peft feeds the
    # prompt) hides from them: they read the last position, so compare on an unpadded batch there
    b = tiny_batch(family, padding="right" if head == "causal-lm" else None)
    want = _logits(loaded, b)
    _close(_ours(ours, b), want[:, n:] if head == "causal-lm" else want, b, head == "causal-lm")
    plain = type(t.hf).from_pretrained(t.folder).eval()
    got_plain = _logits(plain, b)
    assert not torch.allclose(_ours(ours, b), got_plain, atol=1e-3)


def test_encoder_prompt_export_is_refused(tiny, tmp_path):
    ours = apply(tiny("bert", "classification").load(), "prompt", length=3)
    with pytest.raises(ValueError, match="after \\[CLS\\]"):
        export_peft(ours, tmp_path / "exported")
