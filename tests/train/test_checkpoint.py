"""Checkpoint files: pickle-free (safetensors + JSON only), exact round trips, atomic replacement; the best weights
in their final format (PEFT folder or HF folder), replaced atomically and read back exactly."""
import json
import random
import shutil

import numpy as np
import pytest
import torch
from kit import collate, feature_rows

from minift.optim import build_optimizer, build_scheduler
from minift.peft import apply
from minift.train.checkpoint import (
    CheckpointLoadError,
    find_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from minift.train.savestate import atomic_write_json, capture_rng, flatten_optimizer, restore_rng, unflatten_optimizer


def trained(bert, steps=3):
    model = bert().train()
    optimizer = build_optimizer(model, 1e-3, 0.01)
    scheduler = build_scheduler(optimizer, "cosine", 0.2, 10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    batch = collate(feature_rows(8, [5, 9], "classification"))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(input_ids=batch["input_ids"]), batch["labels"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return model, optimizer, scheduler, scaler


def test_optimizer_state_round_trips_exactly(bert):
    _, optimizer, _, _ = trained(bert)
    tensors, info = flatten_optimizer(optimizer)
    json.dumps(info)  # everything that is not a tensor is plain JSON
    restored = unflatten_optimizer(tensors, json.loads(json.dumps(info)))
    original = optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for index, entries in original["state"].items():
        for key, value in entries.items():
            assert torch.equal(restored["state"][index][key], value)


def test_rng_states_round_trip():
    tensors, info = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(tensors, json.loads(json.dumps(info)))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_checkpoint_is_pickle_free_and_restores_everything(tmp_path, bert):
    model, optimizer, scheduler, scaler = trained(bert)
    folder = save_checkpoint(tmp_path / "ck", model, optimizer, scheduler, scaler, {"step": 3, "epoch": 0})
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".json", ".safetensors", ".safetensors",
                                                           ".safetensors"]
    fresh, fresh_opt, fresh_sched, fresh_scaler = trained(bert, steps=1)
    restored = load_checkpoint(tmp_path / "ck", fresh, fresh_opt, fresh_sched, fresh_scaler)
    assert restored.loop == {"step": 3, "epoch": 0} and restored.folder == folder and restored.skipped == []
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert fresh_sched.state_dict() == scheduler.state_dict()
    assert fresh_scaler.state_dict() == scaler.state_dict()
    assert fresh_opt.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_the_last_two_checkpoints_are_kept_and_latest_names_them(tmp_path, bert):
    model, optimizer, scheduler, scaler = trained(bert)
    for step in (3, 5, 7):
        save_checkpoint(tmp_path / "checkpoints", model, optimizer, scheduler, scaler, {"step": step})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest.json", "step-5", "step-7"]
    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert latest == {"checkpoint": "step-7", "step": 7, "kept": ["step-7", "step-5"]}
    assert find_checkpoint(tmp_path / "checkpoints").name == "step-7"
    assert find_checkpoint(tmp_path).name == "step-7"  # the run folder works too


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})  # fails while serialising: the old file must survive
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_resume_errors_are_clear(tmp_path, bert):
    with pytest.raises(CheckpointLoadError, match="no checkpoint found"):
        find_checkpoint(tmp_path)
    model, optimizer, scheduler, scaler = trained(bert)
    save_checkpoint(tmp_path / "ck", model, optimizer, scheduler, scaler, {"step": 3})
    for p in model.bert.parameters():
        p.requires_grad_(False)  # a different method: the trainable set no longer matches
    with pytest.raises(CheckpointLoadError, match="same model, method"):
        load_checkpoint(tmp_path / "ck", model, optimizer, scheduler, scaler)


def test_resume_with_fewer_processes_is_refused(tmp_path, bert):
    """A checkpoint of a 2-process run (one RNG file per process) resumed by 1 process would shard the data
    differently: refused (with more processes, rank 1's file is missing: refused too)."""
    model, optimizer, scheduler, scaler = trained(bert)
    folder = save_checkpoint(tmp_path / "ck", model, optimizer, scheduler, scaler, {"step": 3})
    for suffix in (".safetensors", ".json"):
        shutil.copy(folder / f"rng-rank0{suffix}", folder / f"rng-rank1{suffix}")
    with pytest.raises(CheckpointLoadError, match="written by 2 process"):
        load_checkpoint(tmp_path / "ck", model, optimizer, scheduler, scaler)


def _perturbed(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("method", ["full", "lora"])
def test_best_weights_are_replaced_atomically_and_reload_exactly(tmp_path, bert, method):
    """save_weights writes the final format (an HF folder / a PEFT folder) through best.tmp and a rename; a second
    save replaces the first; load_weights puts exactly those weights back into a model that trained on."""
    model = bert()
    if method == "lora":
        model = apply(model, "lora", r=4, targets=["query", "value"])
    _perturbed(model, 1)
    save_weights(model, tmp_path / "best")
    _perturbed(model, 2)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    save_weights(model, tmp_path / "best")  # the better weights replace the first ones
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("best")) == ["best"]
    expected = "model.safetensors" if method == "full" else "peft_trainable.safetensors"
    assert (tmp_path / "best" / expected).is_file()
    _perturbed(model, 3)  # training went on and got worse
    load_weights(model, tmp_path / "best")
    for name, p in model.named_parameters():
        assert torch.equal(p, saved[name]), name
