"""Peak memory of a training step on the CPU, from the profiler's allocation events.

CUDA has ``torch.cuda.max_memory_allocated``; the CPU allocator keeps no such counter, but
``torch.profiler.profile(profile_memory=True)`` records every allocation and free (``[memory]`` events with a
signed byte count) in time order. Replaying them gives the allocated-bytes curve of the profiled code, and the
``minift.memory:<phase>`` ranges that ``profile.train_steps`` opens give each phase's peak. This lets CI check
the estimator's *peak* model (what is alive in forward, backward and the optimizer step) on CPU, as the GPU
profiler does on CUDA.
"""
from __future__ import annotations

import gc

import torch
from torch.profiler import ProfilerActivity, profile

from minift.memory.estimate import Setup, estimate
from minift.memory.profile import Profile, build_random_model, make_optimizer, random_batch, train_steps
from minift.models.config import ModelConfig
from minift.peft.config import Method
from minift.precision import param_dtype


def _storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
    return sum(seen.values())


def phase_peaks(prof: profile, base: int) -> dict[str, int]:
    """``{phase: peak bytes}`` and ``"end"`` from a profile of ``train_steps``; ``base`` = bytes allocated before."""
    events = prof.profiler.kineto_results.events()
    memory = sorted(((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"), key=lambda x: x[0])
    ranges = [(e.name().split(":", 1)[1], e.start_ns(), e.end_ns()) for e in events
              if e.name().startswith("minift.memory:")]
    peaks: dict[str, int] = {}
    current, i = base, 0
    for name, start, end in sorted(ranges, key=lambda r: r[1]):
        while i < len(memory) and memory[i][0] < start:
            current += memory[i][1]
            i += 1
        peak = current
        while i < len(memory) and memory[i][0] <= end:
            current += memory[i][1]
            peak = max(peak, current)
            i += 1
        peaks[name] = max(peaks.get(name, 0), peak)
    peaks["end"] = current + sum(n for _, n in memory[i:])
    return peaks


def profile_training_cpu(config: ModelConfig, method: Method | None = None, setup: Setup | None = None) -> Profile:
    """One warm-up step, then one profiled training step on the CPU; measured and estimated peaks per phase.

    Returns:
        ``Profile`` whose ``measured`` / ``estimated`` have ``peak in forward``, ``peak in backward``,
        ``peak in optimizer step``, ``steady state after step 2`` and ``peak``.
    """
    method = method or Method()
    setup = setup or Setup(device="cpu")
    if setup.device != "cpu":
        raise ValueError("profile_training_cpu needs Setup(device='cpu') (the estimate must use the CPU's rules)")
    est = estimate(config, method, setup)
    head = setup.resolved_head(config)
    model = build_random_model(config, method, head, torch.device("cpu"), param_dtype(setup.precision), setup.nf4,
                               setup.precision)  # frozen linear weights in the autocast dtype, as minift.train
    optimizer = make_optimizer(setup.optimizer, model)
    batch = random_batch(config, head, setup, torch.device("cpu"))
    train_steps(model, optimizer, batch, head, setup, steps=1)  # optimizer states now exist
    gc.collect()
    states = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    base = _storage_bytes([*model.parameters(), *model.buffers(), *states])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_steps(model, optimizer, batch, head, setup, steps=1)
    peaks = phase_peaks(prof, base)
    measured = {"peak in forward": peaks["forward"], "peak in backward": peaks["backward"],
                "peak in optimizer step": peaks["optimizer step"], "steady state after step 2": peaks["end"]}
    measured["peak"] = max(peaks["forward"], peaks["backward"], peaks["optimizer step"])
    estimated = {"peak in forward": est.phases["forward+loss"],
                 "peak in backward": max(est.phases["backward start"], est.phases["backward (blocks)"]),
                 "peak in optimizer step": est.phases["optimizer step"], "steady state after step 2": est.steady,
                 "peak": est.peak}
    return Profile(measured=measured, estimated=estimated, estimate=est)
