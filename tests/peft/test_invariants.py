"""PEFT invariants for every method on every family (tiny random checkpoints from transformers).

For each (family, head, method): at initialisation the output equals the base model's (LoRA, adapters,
BitFit) or what a soft prompt defines (the base model fed the prompt's tokens, since init="text" copies their
embeddings); after optimizer steps the frozen weights are bit-identical, every trainable parameter moved, and
gradients reached exactly the trainable parameters; with a non-zero LoRA B, merged, unmerged and
saved-and-reloaded outputs agree.
"""
import kit
import pytest
import torch

from minift.peft import apply, load_trainable, merge, save_trainable, trainable_parameters, unmerge
from minift.peft.io import WEIGHTS_NAME

PROMPT_IDS = [5, 6, 7]
N_VIRTUAL = 4
OPTIONS = {
    "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
    "adapter": {"size": 8, "activation": "gelu"},
    "bitfit": {},
    "prompt": {"length": N_VIRTUAL, "init": "text", "token_ids": PROMPT_IDS},
}
CASES = [(f, h) for f in kit.ENCODERS for h in ("classification", "token-classification")] + [
    (f, h) for f in kit.DECODERS for h in ("classification", "causal-lm")]
# what trains, written independently of the library (by name, which is fine in a test)
OWNED = {
    "lora": lambda n: n.endswith((".lora_A", ".lora_B")),
    "adapter": lambda n: ".adapter." in n,
    "bitfit": lambda n: n.endswith(".bias"),
    "prompt": lambda n: n == "prompt.embedding",
}


def _per_token(head):
    return head in ("token-classification", "causal-lm")


def _loss(out, head, labels_seed=0):
    g = torch.Generator().manual_seed(labels_seed)
    if head == "classification":
        labels = torch.randint(0, out.shape[-1], (out.shape[0],), generator=g)
        return torch.nn.functional.cross_entropy(out, labels)
    labels = torch.randint(0, out.shape[-1], out.shape[:2], generator=g)
    return torch.nn.functional.cross_entropy(out.flatten(0, 1), labels.flatten())


def _prompt_reference(base, family, head, b):
    """The base model fed the prompt's token ids (what init='text' defines), realigned to the input tokens."""
    ids, mask = b["input_ids"], b["attention_mask"]
    B = ids.shape[0]
    prompt = torch.tensor((PROMPT_IDS * 2)[:N_VIRTUAL]).expand(B, -1)
    k = 1 if family in kit.ENCODERS else 0
    full_ids = torch.cat([ids[:, :k], prompt, ids[:, k:]], dim=1)
    full_mask = torch.cat([mask[:, :k], torch.ones(B, N_VIRTUAL, dtype=mask.dtype), mask[:, k:]], dim=1)
    out = base(input_ids=full_ids, attention_mask=full_mask)
    if _per_token(head):
        out = torch.cat([out[:, :k], out[:, k + N_VIRTUAL:]], dim=1)
    return out


@pytest.mark.parametrize("method", list(OPTIONS))
@pytest.mark.parametrize("family, head", CASES)
def test_peft_invariants(tiny, tiny_batch, tmp_path, family, head, method):
    overrides = {"attention_bias": True, "mlp_bias": True} if (family, method) == ("llama", "bitfit") else {}
    t = tiny(family, head, **overrides)
    model = t.load()
    if (family, method) == ("mistral", "bitfit"):  # Mistral has no bias terms at all: BitFit is refused
        with pytest.raises(ValueError, match="has none"):
            apply(model, method)
        return
    b = tiny_batch(family)
    real = b["attention_mask"].bool()
    with torch.no_grad():
        base_out = model(**b)
        expected0 = _prompt_reference(model, family, head, b) if method == "prompt" else base_out

    model = apply(model, method, **OPTIONS[method])

    # 1. at initialisation
    with torch.no_grad():
        out0 = model(**b)
    assert out0.shape == base_out.shape
    if method == "prompt":
        got, want = (out0[real], expected0[real]) if _per_token(head) else (out0, expected0)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    else:
        assert torch.equal(out0, expected0)

    # 2. what trains: the method's own parameters, plus the head unless it is a causal-LM head
    head_key = "score" if family not in kit.ENCODERS else "classifier"
    prefix = "model." if method == "prompt" else ""
    names = [n for n, _ in model.named_parameters()]
    trains_head = head != "causal-lm"
    expected = {n for n in names if OWNED[method](n) or (trains_head and n.startswith(prefix + head_key + "."))}
    assert set(trainable_parameters(model)) == expected
    assert expected, "the method must train something"

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        _loss(model(**b), head, step).backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad == expected
        opt.step()
    model.eval()
    for n, p in model.named_parameters():
        if n in expected:
            assert not torch.equal(p, before[n]), f"{n} did not move"
        else:
            assert torch.equal(p, before[n]), f"frozen {n} changed"

    # 3. merged / unmerged / saved-and-reloaded agree (LoRA B is non-zero after training)
    with torch.no_grad():
        out = model(**b)
    cmp = (lambda x: x[real]) if _per_token(head) else (lambda x: x)
    if method == "lora":
        assert all(torch.count_nonzero(p) == p.numel() for n, p in model.named_parameters() if n.endswith("lora_B"))
        assert not torch.allclose(cmp(out), cmp(base_out), atol=1e-4)
        merge(model)
        merge(model)
        with torch.no_grad():
            merged = model(**b)
        torch.testing.assert_close(cmp(merged), cmp(out), rtol=0, atol=1e-5)
        unmerge(model)
        with torch.no_grad():
            unmerged = model(**b)
        torch.testing.assert_close(cmp(unmerged), cmp(out), rtol=0, atol=1e-5)
    save_trainable(model, tmp_path / "saved")
    from safetensors.torch import load_file
    assert set(load_file(str(tmp_path / "saved" / WEIGHTS_NAME))) == expected
    reloaded = load_trainable(t.load(), tmp_path / "saved")
    with torch.no_grad():
        again = reloaded(**b)
    torch.testing.assert_close(cmp(again), cmp(out), rtol=0, atol=1e-5)
