"""--compile: each transformer block compiled after the PEFT method gives the eager losses (every method, gradient
checkpointing, DDP), through the command too, with the compile time reported apart.

Dropout is off (compiled dropout draws inductor's own random numbers, so masks would differ). The method sweep uses
the ``aot_eager`` backend (Dynamo's trace and AOTAutograd's joint graph: what breaks with PEFT modules breaks
there, and it needs no C++ compiler); inductor's kernels are checked once, through the command, where a C++
compiler is found."""
import json
from pathlib import Path

import kit
import pytest
import torch

from minift.peft import apply, trainable_parameters
from minift.train.compile import compile_blocks, has_cpp_compiler

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
OPTIONS = {"lora": {"dropout": 0.0}, "adapter": {"size": 8}, "prompt": {"length": 3}}
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # fp32: compiled and eager kernels sum in other orders


def _losses(checkpoint, method, *, compiled, checkpointing=False, ddp=False, steps=3):
    torch.manual_seed(0)
    model = apply(checkpoint.load(), method, **OPTIONS.get(method, {})) if method != "full" else checkpoint.load()
    if method == "full":
        model.requires_grad_(True)
    model.gradient_checkpointing = checkpointing
    if compiled:
        assert compile_blocks(model, backend="aot_eager") == 2
    model.train()
    trained = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    optimizer = torch.optim.AdamW(trainable_parameters(model).values() if method != "full" else model.parameters(),
                                  lr=1e-2)
    batch = kit.batch("bert", B=4, T=9, head="classification")
    losses = []
    for _ in range(steps):
        logits = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", ["full", "lora", "adapter", "bitfit", "prompt"])
def test_compiled_blocks_train_like_eager(tiny, method):
    checkpoint = tiny("bert", "classification", **NO_DROPOUT)
    eager = _losses(checkpoint, method, compiled=False)
    torch.testing.assert_close(_losses(checkpoint, method, compiled=True), eager, **TOLERANCE)


def test_compiled_blocks_with_gradient_checkpointing(tiny):
    checkpoint = tiny("bert", "classification", **NO_DROPOUT)
    eager = _losses(checkpoint, "lora", compiled=False)
    torch.testing.assert_close(_losses(checkpoint, "lora", compiled=True, checkpointing=True), eager, **TOLERANCE)


def test_compiled_blocks_under_ddp(tiny, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        checkpoint = tiny("bert", "classification", **NO_DROPOUT)
        eager = _losses(checkpoint, "lora", compiled=False)
        torch.testing.assert_close(_losses(checkpoint, "lora", compiled=True, ddp=True), eager, **TOLERANCE)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not has_cpp_compiler(), reason="inductor's CPU backend needs a C++ compiler (g++ / clang++)")
def test_compile_flag_through_the_command(run_config):
    """--compile true (inductor): the same losses as eager within the tolerance, the compile time in the summary
    and the training log."""
    from minift.train.recipe import train_one

    runs = {}
    for compiled in (False, True):
        config = run_config(f"compile-{compiled}", compile=compiled, lora={"dropout": 0.0}, dropout=0.0)
        summary = train_one(config)
        lines = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
        runs[compiled] = (summary, [r for r in lines if r["type"] == "train"])
    (eager, eager_log), (compiled, compiled_log) = runs[False], runs[True]
    torch.testing.assert_close([r["loss"] for r in compiled_log], [r["loss"] for r in eager_log], **TOLERANCE)
    assert eager["compile_s"] is None and compiled["compile_s"] > 0
    assert all(r["compile_s"] > 0 for r in compiled_log) and "compile_s" not in eager_log[0]
