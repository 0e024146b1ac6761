"""Every family and head of the kit's table against transformers: the same keys and the same outputs on a padded
batch (fp32, CPU; decoders with a right- and a left-padded row). A family added to ``kit.FAMILIES`` is checked here
with all of its heads."""
import kit
import pytest
import torch

CASES = [(family, head) for family, spec in kit.FAMILIES.items() for head in spec.classes]


def _keys(module):
    return {k for k in module.state_dict() if not k.endswith("position_ids")}  # a buffer minift does not keep


@pytest.mark.parametrize("family, head", CASES, ids=[f"{f}-{h}" for f, h in CASES])
def test_parity_with_transformers(tiny, tiny_batch, family, head):
    t = tiny(family, head, num_labels=5 if head == "token-classification" else 3)
    model = t.load()
    assert not model.training
    # a bare decoder loads with its default causal-LM head: compare the backbone, which the bare HF model is
    bare_decoder = head is None and family in kit.DECODERS
    ours = model.backbone if bare_decoder else model
    assert bare_decoder or model.fresh_keys == []
    b = tiny_batch(family, padding="mixed" if family in kit.DECODERS else "right")  # decoders: left padding too
    with torch.no_grad():
        got = ours(**b)
        out = t.hf(**b)
    expected = out.last_hidden_state if head is None else out.logits
    assert got.shape == expected.shape
    if family in kit.DECODERS and got.dim() == 3:  # causal: padded positions at the end are garbage in both
        keep = b["attention_mask"].bool()
        got, expected = got[keep], expected[keep]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert _keys(model.backbone if head is None else model) == _keys(t.hf)  # a bare HF model has no prefix
