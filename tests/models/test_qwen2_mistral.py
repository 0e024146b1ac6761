"""What makes Qwen2 and Mistral more than Llama: Qwen2's q/k/v biases (none on o_proj) and the sliding window of
both. Every head's parity with transformers is in ``test_families.py`` (both families are in ``kit.FAMILIES``)."""
import kit
import pytest
import torch

from minift import peft
from minift.models import load_pretrained, save_pretrained


def test_qwen2_biases_on_q_k_v_only(tiny):
    attn = tiny("qwen2", "causal-lm").load().backbone.layers[0].self_attn
    assert all(getattr(attn, n).bias is not None for n in ("q_proj", "k_proj", "v_proj"))
    assert attn.o_proj.bias is None


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_sliding_window_is_what_transformers_does_and_it_matters(tiny, tiny_batch, family):
    t = tiny(family, "causal-lm")
    windows = [layer.window for layer in t.load().backbone.layers]
    assert windows == ([None, 4] if family == "qwen2" else [4, 4])  # qwen2: layers from max_window_layers=1 on
    b = tiny_batch(family, T=12, padding="mixed")
    keep = b["attention_mask"].bool()
    full = tiny(family, "causal-lm", **({"use_sliding_window": False} if family == "qwen2" else
                                       {"sliding_window": None}))  # the same architecture without a window
    full.hf.load_state_dict(t.hf.state_dict())
    full.save()
    with torch.no_grad():
        windowed, unwindowed = t.load()(**b)[keep], full.load()(**b)[keep]
        torch.testing.assert_close(windowed, t.hf(**b).logits[keep], atol=1e-4, rtol=0)
        torch.testing.assert_close(unwindowed, full.hf(**b).logits[keep], atol=1e-4, rtol=0)
    assert (windowed - unwindowed).abs().max() > 1e-3  # 12 tokens past a window of 4: the window changes outputs


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_saved_folder_loads_in_transformers_with_the_same_window(tiny, tiny_batch, tmp_path, family):
    transformers = pytest.importorskip("transformers")
    model = tiny(family, "classification").load()
    save_pretrained(model, tmp_path / "saved")
    again = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    assert again.config.sliding_window == 4
    b = tiny_batch(family)
    with torch.no_grad():
        torch.testing.assert_close(again(**b).logits, model(**b), atol=1e-4, rtol=0)
    assert load_pretrained(tmp_path / "saved", head="classification").config.attention_layers == \
        model.config.attention_layers


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_peft_defaults_come_from_the_family(tiny, family):
    lora = peft.apply(tiny(family, "classification").load(), "lora", r=2)
    targets = {name.rsplit(".", 1)[1] for name, m in lora.named_modules() if isinstance(m, peft.LoRALinear)}
    assert targets == {"q_proj", "v_proj"}
    adapted = peft.apply(tiny(family, "classification").load(), "adapter", size=4)
    wrapped = {name.split(".", 3)[3] for name, m in adapted.named_modules() if isinstance(m, peft.AdapterLinear)}
    assert wrapped == {"self_attn.o_proj", "mlp.down_proj"}
    prompt = peft.apply(tiny(family, "causal-lm").load(), "prompt", length=3, init="random")
    b = kit.batch(family, padding=None)
    assert prompt(**b).shape == (3, 10, kit.VOCAB)
