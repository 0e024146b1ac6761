"""The estimator per GPU under torchrun (``Setup(gpus=N, shard="ddp"|"fsdp")``, ``--gpus N --shard ...``): FSDP's
weights, gradients and AdamW states are GPU 0's ``torch.chunk`` share of the meta-built model's real parameters
(1/N), a 4-bit base stays whole, the gathered units are the root's and two blocks' whole parameters; DDP adds a copy
of the gradients (its buckets). What a real 2-process FSDP run holds is compared in tests/train/test_fsdp.py."""
from __future__ import annotations

import json

import pytest
import torch

from minift.memory.__main__ import main
from minift.memory.estimate import Setup, estimate
from minift.memory.params import meta_model
from minift.models.presets import resolve_model
from minift.peft.config import Method
from minift.quant import nf4_layers

BF16 = {"precision": "bf16", "max_length": 1024, "gradient_checkpointing": True}


@pytest.fixture(scope="module")
def llama3b():
    return resolve_model("llama-3.2-3b")[0]


def first_chunk(params, gpus: int) -> int:
    """Elements GPU 0 holds: the first ``torch.chunk`` of dim 0 of each tensor (FSDP2's ``Shard(0)``)."""
    return sum(torch.chunk(p, gpus, dim=0)[0].numel() for p in params)


def units(model) -> tuple:
    """(root elements, largest block's elements, largest block's trainable elements) of ``model``."""
    blocks = [list(b.parameters()) for b in model.blocks]
    inside = {id(p) for ps in blocks for p in ps}
    root = sum(p.numel() for p in model.parameters() if id(p) not in inside)
    return (root, max(sum(p.numel() for p in ps) for ps in blocks),
            max(sum(p.numel() for p in ps if p.requires_grad) for ps in blocks))


@pytest.mark.parametrize("gpus", [2, 4, 8])
def test_full_fsdp_terms_are_gpu0_shares(llama3b, gpus):
    one = estimate(llama3b, Method("full"), Setup(**BF16))
    e = estimate(llama3b, Method("full"), Setup(**BF16, gpus=gpus, shard="fsdp"))
    model = meta_model(llama3b, "causal-lm", Method("full"))
    share = first_chunk(model.parameters(), gpus)
    assert (e.weights, e.gradients, e.optimizer_states) == (4 * share, 4 * share, 8 * share)
    for term in ("weights", "gradients", "optimizer_states"):
        assert getattr(e, term) / getattr(one, term) == pytest.approx(1 / gpus, rel=0.01)
    root, block, block_trainable = units(model)
    # bf16: gathered in bf16 (2 B), one block's whole gradients in bf16 and their fp32 reduce-scatter input
    assert e.gathered == (root + 2 * block) * 2 + block_trainable * (2 + 4)
    assert e.autocast_copies == 0 < one.autocast_copies  # FSDP gathers in bf16: autocast copies nothing
    assert e.activations.layers == one.activations.layers  # each GPU runs its own micro-batch
    assert e.ddp_buckets == 0 and e.peak < one.peak


def test_lora_fsdp_shards_the_frozen_base_and_the_adapters(llama3b):
    method = Method.of("lora", r=16)
    e = estimate(llama3b, method, Setup(**BF16, gpus=4, shard="fsdp"))
    model = meta_model(llama3b, "causal-lm", method)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert e.weights == 4 * first_chunk(model.parameters(), 4)
    assert (e.gradients, e.optimizer_states) == (4 * first_chunk(trainable, 4), 8 * first_chunk(trainable, 4))


def test_a_4bit_base_stays_whole_on_every_gpu(llama3b):
    """FSDP2 shards parameters, not buffers: the NF4 codes and scales are counted whole on each GPU."""
    setup = Setup(**BF16, quantize="nf4", gpus=4, shard="fsdp")
    e = estimate(llama3b, Method("lora"), setup)
    model = meta_model(llama3b, "causal-lm", Method("lora"), setup.nf4)
    codes = sum(layer.nbytes for layer in nf4_layers(model).values())
    assert codes > 0 and e.weights == 4 * first_chunk(model.parameters(), 4) + codes
    one = estimate(llama3b, Method("lora"), Setup(**BF16, quantize="nf4"))
    assert one.weights - codes == pytest.approx(4 * (e.weights - codes), rel=0.01)


def test_ddp_adds_a_copy_of_the_gradients(llama3b):
    one = estimate(llama3b, Method("full"), Setup(**BF16))
    ddp = estimate(llama3b, Method("full"), Setup(**BF16, gpus=2, shard="ddp"))
    assert ddp.ddp_buckets == one.gradients > 0
    assert ddp.phases == {name: value + one.gradients for name, value in one.phases.items()}


def test_one_gpu_is_the_single_process_estimate(llama3b):
    one = estimate(llama3b, Method("lora"), Setup(**BF16)).to_dict()
    assert estimate(llama3b, Method("lora"), Setup(**BF16, gpus=1, shard="fsdp")).to_dict() == one
    with pytest.raises(ValueError, match="gpus must be a positive integer"):
        Setup(gpus=0)
    with pytest.raises(ValueError, match="unknown shard"):
        Setup(gpus=2, shard="zero3")


def test_command_line_per_gpu(llama3b, capsys):
    argv = ["--model", "llama-3.2-3b", "--method", "full", "--precision", "bf16", "--gradient-checkpointing", "true",
            "--max-length", "1024", "--gpus", "4", "--shard", "fsdp"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = estimate(llama3b, Method("full"), Setup(**BF16, gpus=4, shard="fsdp"))
    assert (out["setup"]["gpus"], out["setup"]["shard"]) == (4, "fsdp")
    assert out["methods"][0]["weights"] == expected.weights and out["methods"][0]["peak"] == expected.peak
    assert out["methods"][0]["gathered"] == expected.gathered
    assert main(argv) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "gathered units (FSDP)" in text and "per GPU of 4 (torchrun, --shard fsdp" in text
    assert main(["--model", "llama-3.2-3b", "--gpus", "0"]) == 2
    assert "gpus must be a positive integer" in capsys.readouterr().err
