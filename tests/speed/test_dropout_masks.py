"""minift.models.dropout: the same dropout as torch's (keep rate, scale, independence, seeding, backward) from
cheaper masks; and attention's own math path with dropout equals SDPA's."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minift.models.attention import attention, attention_with_dropout, build_mask
from minift.models.dropout import Dropout, dropout, keep_mask

N = 1 << 21  # 2M draws: a keep rate's standard error ~2e-4


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_keep_rate_and_scale(p):
    x = torch.ones(N)
    y = dropout(x, p)
    kept = y != 0
    rate = kept.float().mean().item()
    assert abs(rate - (1 - p)) < 5 * ((p * (1 - p) / N) ** 0.5) + 1 / 65536
    scales = y[kept].unique()
    assert scales.numel() == 1 and abs(scales.item() * (1 - p) - 1) < 2e-4  # 1 / P(keep), P rounded to 2^-16
    assert abs(y.mean().item() - 1) < 5 * ((p / (1 - p) / N) ** 0.5)  # unbiased


def test_independence_within_and_between_masks():
    """Neighbouring elements (the four 16-bit fields of one random word, and across words) and two successive
    masks are uncorrelated; the 2x2 counts of neighbours match independent draws."""
    p, limit = 0.3, 5 / N ** 0.5
    a, _ = keep_mask((N,), p)
    b, _ = keep_mask((N,), p)
    a, b = a.float(), b.float()
    for lag in (1, 2, 3, 4, 5, 8):
        r = torch.corrcoef(torch.stack([a[:-lag], a[lag:]]))[0, 1].item()
        assert abs(r) < limit, f"lag {lag}: correlation {r}"
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < limit
    both = (a[:-1] * a[1:]).mean().item()
    assert abs(both - 0.7 ** 2) < 5 * (0.49 * 0.51 / N) ** 0.5
    # every position of the 64-bit word keeps at the same rate (no biased field)
    for field in range(4):
        assert abs(a[field::4].mean().item() - 0.7) < 5 * (0.21 / (N / 4)) ** 0.5


def test_seeded_like_torch_and_backward_uses_the_same_mask():
    x = torch.randn(4, 16, 32, requires_grad=True)
    torch.manual_seed(3)
    y1 = dropout(x, 0.2)
    torch.manual_seed(3)
    y2 = dropout(x, 0.2)
    assert torch.equal(y1, y2)
    (g,) = torch.autograd.grad(y1.sum(), x)
    kept = y1 != 0
    assert 0 < kept.float().mean() < 1
    assert torch.allclose(g, kept * (1 / 0.8), rtol=1e-4)  # d(x · keep · scale)/dx, the forward's mask


def test_module_is_an_nn_dropout_and_identity_in_eval():
    d = Dropout(0.1)
    assert isinstance(d, nn.Dropout) and d.p == 0.1 and "p=0.1" in repr(d)
    x = torch.randn(8, 8)
    assert d.eval()(x) is x and dropout(x, 0.0) is x
    with pytest.raises(ValueError):
        Dropout(0.1, inplace=True)


def test_gradient_checkpointing_replays_the_masks():
    """torch.utils.checkpoint restores the RNG state before recomputing: the same masks, the same gradients."""
    w = torch.randn(32, 32, requires_grad=True)
    x = torch.randn(6, 32)

    def f(x):
        return dropout(x @ w, 0.3) @ w

    torch.manual_seed(0)
    plain = torch.autograd.grad(f(x).square().sum(), w)[0]
    torch.manual_seed(0)
    out = torch.utils.checkpoint.checkpoint(f, x, use_reentrant=False)
    assert torch.equal(torch.autograd.grad(out.square().sum(), w)[0], plain)


@pytest.mark.parametrize("case", ["padding", "causal", "none", "empty-row"])
def test_attention_math_path_equals_sdpa(case):
    """With dropout off, attention_with_dropout is SDPA (values and gradients), masks included."""
    torch.manual_seed(0)
    B, nh, T, hs = 2, 4, 7, 8
    q, k, v = (torch.randn(B, nh, T, hs, dtype=torch.float64, requires_grad=True) for _ in range(3))
    am = torch.ones(B, T, dtype=torch.long)
    am[1, 5:] = 0
    if case == "empty-row":
        am[0] = 0
    mask = None if case == "none" else build_mask(am, T, causal=case == "causal")
    got = attention_with_dropout(q, k, v, mask, case == "causal", 0.0)
    want = attention(q, k, v, mask, causal=case == "causal")
    torch.testing.assert_close(got, want)
    g1 = torch.autograd.grad(got.square().sum(), (q, k, v))
    g2 = torch.autograd.grad(want.square().sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_attention_dropout_drops_the_probabilities():
    """With dropout, the output is dropout(softmax(scores)) @ v with the mask keep_mask draws at that point."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8) for _ in range(3))
    torch.manual_seed(7)
    got = attention(q, k, v, None, dropout_p=0.25)  # the CPU path: attention_with_dropout
    torch.manual_seed(7)
    probs = torch.softmax(q @ k.transpose(-2, -1) * 8 ** -0.5, dim=-1)
    keep, scale = keep_mask(probs.shape, 0.25)
    torch.testing.assert_close(got, (probs * keep * scale) @ v)
    assert not torch.allclose(got, F.scaled_dot_product_attention(q, k, v))


def test_attention_math_path_in_bf16_is_sdpa_on_the_cpu():
    """bf16 inputs (under autocast too) are computed in fp32 and rounded once, as SDPA's CPU math path does."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8, dtype=torch.bfloat16) for _ in range(3))
    am = torch.ones(2, 7, dtype=torch.long)
    am[1, 5:] = 0
    mask = build_mask(am, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention_with_dropout(q, k, v, mask, False, 0.0)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=2 ** -6, rtol=2 ** -7)  # one bf16 rounding apart at most
