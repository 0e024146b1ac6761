"""build_mask never reads an accelerator mask back to the host (a sync on every forward).

A meta-device tensor stands in for a device tensor: reading its values (``bool(mask.all())``) raises, so the
test fails if build_mask inspects the values of a non-CPU mask."""
import torch

from minift.models.attention import build_mask


def test_non_cpu_mask_is_not_read_back():
    mask = torch.ones(2, 5, dtype=torch.long, device="meta")
    with torch.device("meta"):
        out = build_mask(mask, 5, causal=True)
    assert out is not None and out.shape == (2, 1, 5, 5) and out.device.type == "meta"


def test_cpu_mask_without_padding_takes_the_fused_path():
    assert build_mask(torch.ones(2, 5, dtype=torch.long), 5, causal=True) is None
    padded = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = build_mask(padded, 5, causal=True)
    assert out.shape == (2, 1, 5, 5)
    assert not out[0, 0, 4, 3] and out[1, 0, 4, 3] and not out[1, 0, 0, 1]
