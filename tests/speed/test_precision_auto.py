"""--precision auto (the default): bf16 autocast where the device multiplies bf16 fast, fp32 elsewhere, recorded
resolved and kept on resume; frozen linear weights stored once in the autocast dtype give bit-identical training."""
import json
from pathlib import Path

import kit
import pytest
import torch
import yaml

from minift import precision
from minift.peft import apply, trainable_parameters
from minift.precision import AUTO, cpu_has_fast_bf16, frozen_in_compute_dtype, resolve


@pytest.fixture
def fast_bf16(monkeypatch):
    """``fast_bf16(flag)``: pretend this CPU has (or lacks) fast bf16 matrix units."""
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)  # conftest sets it for every other test

    def set_to(flag: bool):
        monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: flag)
    return set_to


def test_the_environment_overrides_the_cpu_check(fast_bf16, monkeypatch):
    for detected in (True, False):
        fast_bf16(detected)
        for forced, expected in (("1", "bf16"), ("0", "fp32"), ("", "bf16" if detected else "fp32")):
            monkeypatch.setenv(precision.CPU_BF16_ENV, forced)
            assert resolve(AUTO, "cpu") == expected


def test_auto_follows_the_device(fast_bf16, monkeypatch):
    fast_bf16(True)
    assert resolve(AUTO, "cpu") == "bf16"
    fast_bf16(False)
    assert resolve(AUTO, "cpu") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert resolve(AUTO, "cuda") == expected
    assert resolve("mixed-bf16", "cpu") == "bf16" and resolve("fp16", "cuda") == "fp16"
    with pytest.raises(ValueError, match="auto or one of"):
        resolve("fp8", "cpu")


def test_cpu_flags_read_from_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "CPUINFO", info)
    try:
        for flags, expected in (("fpu avx2 avx512f", False), ("fpu avx512f amx_tile amx_bf16", True),
                                ("fpu avx512_bf16", True)):
            info.write_text(f"processor : 0\nflags\t\t: {flags}\n")
            cpu_has_fast_bf16.cache_clear()
            assert cpu_has_fast_bf16() is expected
    finally:
        cpu_has_fast_bf16.cache_clear()


def test_auto_is_recorded_and_resumes_the_same(run_config, fast_bf16):
    from minift.train.flags import resume_config
    from minift.train.recipe import train_one

    fast_bf16(True)
    config = run_config(precision=AUTO)
    assert config.precision == "bf16"
    summary = train_one(config)
    out = config.output_dir
    assert summary["precision"] == "bf16" and summary["compile_s"] is None
    assert yaml.safe_load((Path(out) / "config.yaml").read_text())["precision"] == "bf16"
    fast_bf16(False)  # another machine: the run's own precision still decides
    resumed = resume_config(out, {"max_steps": 3})
    assert resumed.precision == "bf16"
    assert json.loads((Path(out) / "summary.json").read_text())["precision"] == "bf16"


def _train(model, batch, steps=2):
    optimizer = torch.optim.AdamW(trainable_parameters(model).values(), lr=1e-2)
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_frozen_weights_in_bf16_train_bit_identically(tiny, method):
    """Autocast would have cast the frozen fp32 weights to the very same bf16 values on every call."""
    batch = kit.batch("bert", B=4, T=9, head="classification")
    checkpoint, runs = tiny("bert", "classification"), []
    for cast in (False, True):
        torch.manual_seed(0)  # the same LoRA initialisation
        model = apply(checkpoint.load(), method)
        model.train()
        before = {n: p.dtype for n, p in model.named_parameters()}
        n = frozen_in_compute_dtype(model, "bf16") if cast else 0
        torch.manual_seed(0)  # the same dropout masks
        runs.append((_train(model, batch), {k: v.detach().float() for k, v in trainable_parameters(model).items()}))
        if cast:
            assert n > 0
            linear = {f"{m}.{n}" for m, module in model.named_modules() if isinstance(module, torch.nn.Linear)
                      for n, _ in module.named_parameters(recurse=False)}
            for name, p in model.named_parameters():
                if p.requires_grad or name not in linear:
                    assert p.dtype == before[name], name  # trainable: fp32 master weights; norms, embeddings
                else:
                    assert p.dtype == torch.bfloat16, name  # a frozen linear's weight or bias
    assert runs[0][0] == runs[1][0]
    for name, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][name]), name


def test_frozen_cast_leaves_saved_tied_and_fp32_runs_alone(tiny):
    model = apply(tiny("gpt2", "causal-lm").load(), "lora")  # lm_head tied to the token embeddings
    head = model.head.weight
    assert frozen_in_compute_dtype(model, "fp32") == 0 and frozen_in_compute_dtype(model, "bf16-pure") == 0
    skip = [n for n, p in model.named_parameters() if n.endswith("c_proj.weight")][:1]
    frozen_in_compute_dtype(model, "bf16", skip=skip)
    assert model.head.weight is head and head.dtype == torch.float32  # shared with an embedding: stays
    assert model.get_parameter(skip[0]).dtype == torch.float32
