"""PEFT on a CUDA device: parameters follow the base model's device and dtype, bf16 autocast training keeps
frozen weights bit-identical, a bf16 merge equals the fp32-computed delta cast back. Skipped without a GPU."""
import kit
import pytest
import torch

from minift.models import load_pretrained
from minift.peft import apply, merge, trainable_parameters


@pytest.mark.cuda
@pytest.mark.parametrize("method", list(kit.PEFT_OPTIONS))
def test_autocast_training_on_cuda(tiny, tiny_batch, method):
    t = tiny("bert", "classification")
    model = apply(t.load().cuda(), method, **kit.PEFT_OPTIONS[method])
    assert all(p.is_cuda for p in model.parameters())
    b = {k: v.cuda() for k, v in tiny_batch("bert").items()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-2, weight_decay=0.0)
    model.train()
    for _ in range(2):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**b)
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    trainable = set(trainable_parameters(model))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), n


@pytest.mark.cuda
def test_bf16_merge_on_cuda(tiny):
    t = tiny("llama", "causal-lm")
    model = apply(load_pretrained(t.folder, dtype=torch.bfloat16, device="cuda"), "lora", r=4)
    layer = model.blocks[0].self_attn.q_proj
    assert layer.lora_A.dtype == torch.bfloat16 and layer.lora_A.is_cuda
    with torch.no_grad():
        layer.lora_B.normal_()
    w0 = layer.weight.detach().clone()
    expected = (w0.float() + (layer.lora_B.float() @ layer.lora_A.float()) * layer.scaling).to(torch.bfloat16)
    merge(model)
    assert torch.equal(layer.weight, expected)
