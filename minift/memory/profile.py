"""The CUDA profiler: real training steps of minift models, memory measured per phase, beside the estimate.

``profile_training(config, method, setup)`` builds the model from its ``ModelConfig`` directly on the GPU with
random weights (shapes are all that matter for memory), applies the PEFT method with ``minift.peft.apply``,
and runs ``steps`` training steps the way ``minift.train`` does (forward + loss under autocast, backward,
optimizer step, ``zero_grad(set_to_none=True)``), recording ``torch.cuda.memory_allocated`` and
``max_memory_allocated`` (torchtune's ``get_memory_stats``) per phase of the *last* step — the steady state,
where the optimizer states already exist. Needs a CUDA GPU.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import torch

from minift.memory.estimate import Estimate, Setup, estimate
from minift.memory.params import build_meta_model
from minift.models.config import ModelConfig
from minift.peft.config import Method
from minift.peft.io import saved_names
from minift.precision import autocast, frozen_in_compute_dtype, param_dtype, uses_grad_scaler
from minift.quant import NF4Config, compute_dtype_for, nf4_layers

PHASES = ("weights loaded", "after forward", "peak in forward", "peak in backward", "peak in optimizer step",
          "steady state after step 2", "peak")


@dataclass
class Profile:
    """Measured bytes per phase and the estimate of the same step."""

    measured: dict[str, int]
    estimated: dict[str, int]
    estimate: Estimate
    seconds_per_step: float = 0.0

    def error(self, phase: str = "peak") -> float:
        """(estimate − measured) / measured, in %."""
        m = self.measured[phase]
        return 100.0 * (self.estimated[phase] - m) / m if m else float("nan")


def _require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise RuntimeError("the memory profiler measures torch.cuda.memory_allocated and needs a CUDA GPU "
                           "(torch.cuda.is_available() is False); the estimate itself needs no GPU")
    return torch.device("cuda")


def build_random_model(config: ModelConfig, method: Method, head: str | None, device: torch.device,
                       dtype: torch.dtype, quantize: NF4Config | None = None,
                       precision: str | None = None) -> torch.nn.Module:
    """A minift ``TaskModel`` of ``config`` with random weights on ``device``, ``method`` applied: the very model
    the estimate counted (``params.build_meta_model``), materialised. A 4-bit base (``quantize``) gets N(0, 0.02²)
    weights quantised layer by layer on ``device`` (one fp32 weight alive at a time) and the compute dtype a run
    on ``device`` uses (``minift.quant.compute_dtype_for``). With ``precision`` (a run on one process), the frozen
    linear weights are then stored in its autocast dtype as ``minift.train``'s recipe does
    (``minift.precision.frozen_in_compute_dtype``, the saved parameters skipped)."""
    model = build_meta_model(config, head, method, quantize)
    model = model.to_empty(device=device).to(dtype)
    model.tie_weights()  # a PromptModel passes it to the model it wraps
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
    for layer in nf4_layers(model).values():
        layer.init_normal_(0.02)
        layer.compute_dtype = compute_dtype_for(device.type, dtype)
    if precision is not None:
        frozen_in_compute_dtype(model, precision, skip=saved_names(model))
    return model


def make_optimizer(name: str, model: torch.nn.Module, lr: float = 1e-5) -> torch.optim.Optimizer:
    """The optimizer ``Setup.optimizer`` names, over the trainable parameters (minift's decay groups)."""
    from minift.optim import param_groups

    groups = param_groups(model, 0.01)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, foreach=False)
    if name == "adamw-foreach":
        return torch.optim.AdamW(groups, lr=lr, foreach=True)
    if name == "adamw-fused":
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    if name in ("sgd", "sgd-momentum"):
        return torch.optim.SGD(groups, lr=lr, momentum=0.9 if name == "sgd-momentum" else 0.0)
    raise ValueError(f"optimizer {name!r} cannot be profiled (adamw-8bit is an estimate-only what-if: minift "
                     "does not ship an 8-bit optimizer)")


def random_batch(config: ModelConfig, head: str | None, setup: Setup, device: torch.device) -> dict:
    """A random batch of ``setup``'s shape with labels for ``head``."""
    B, T = setup.batch_size, setup.max_length
    ids = torch.randint(3, config.vocab_size, (B, T), device=device)
    batch = {"input_ids": ids}
    if setup.padded:
        mask = torch.ones(B, T, dtype=torch.long, device=device)
        mask[0, T // 2:] = 0
        batch["attention_mask"] = mask
    if head == "causal-lm":
        batch["labels"] = ids.clone()
    elif head == "classification":
        batch["labels"] = torch.randint(0, config.num_labels, (B,), device=device)
    elif head == "regression":
        batch["labels"] = torch.rand(B, device=device)
    elif head == "token-classification":
        batch["labels"] = torch.randint(0, config.num_labels, (B, T), device=device)
    return batch


def profile_training(config: ModelConfig, method: Method | None = None, setup: Setup | None = None,
                     steps: int = 3) -> Profile:
    """Run ``steps`` (≥ 2) training steps on the GPU and measure memory per phase of the last one.

    Returns:
        ``Profile`` with measured and estimated bytes for each of ``PHASES``.
    """
    method, setup = method or Method(), setup or Setup()
    if steps < 2:
        raise ValueError("profile at least 2 steps: the optimizer states appear in step 1, steady state in step 2")
    device = _require_cuda()
    est = estimate(config, method, setup)
    head = setup.resolved_head(config)
    gc.collect()
    torch.cuda.empty_cache()
    _warm_up(device)
    memory = _CudaMemory()
    model = build_random_model(config, method, head, device, param_dtype(setup.precision), setup.nf4,
                               setup.precision)
    optimizer = make_optimizer(setup.optimizer, model)
    batch = random_batch(config, head, setup, device)
    start = time.perf_counter()
    m = train_steps(model, optimizer, batch, head, setup, steps, memory)
    seconds = (time.perf_counter() - start) / steps
    after_forward = est.steady + est.autocast_copies + est.activations.total + est.extra["logits_live"]
    e = {"weights loaded": est.weights, "after forward": after_forward,
         "peak in forward": est.phases["forward+loss"],
         "peak in backward": max(est.phases["backward start"], est.phases["backward (blocks)"]),
         "peak in optimizer step": est.phases["optimizer step"], "steady state after step 2": est.steady,
         "peak": est.peak}
    del model, optimizer, batch
    gc.collect()
    torch.cuda.empty_cache()
    return Profile(measured=m, estimated=e, estimate=est, seconds_per_step=seconds)


class _CudaMemory:
    """``memory_allocated`` / ``max_memory_allocated`` relative to what was allocated when it was created."""

    def __init__(self):
        torch.cuda.synchronize()
        self.base = torch.cuda.memory_allocated()

    def reset(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def now(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated() - self.base

    def peak(self) -> int:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - self.base


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, kind: str | None,
                setup: Setup, steps: int, memory=None) -> dict[str, int]:
    """``steps`` training steps as ``minift.train`` runs them; ``memory`` (``reset/now/peak``) is read per phase.

    Returns:
        ``{phase: bytes}`` of the last step (empty without ``memory``).
    """
    from minift.losses import loss_sum

    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler(device.type, enabled=uses_grad_scaler(setup.precision))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    backend = torch.nn.attention.SDPBackend.MATH if setup.attention == "eager" else None
    model.gradient_checkpointing = setup.gradient_checkpointing
    model.train()
    m = {"weights loaded": memory.now()} if memory else {}
    for _ in range(steps):
        for _ in range(setup.grad_accum):  # the last micro-batch's phases are kept
            if memory:
                memory.reset()
            with _phase("forward"), autocast(setup.precision, device), _sdpa(backend):
                out = model(**inputs)
            with _phase("forward"):
                loss = loss_sum(kind, out, batch["labels"]) if kind else out.float().sum()
            if memory:
                m["after forward"], m["peak in forward"] = memory.now(), memory.peak()
                memory.reset()
            with _phase("backward"), _sdpa(backend):
                scaler.scale(loss / setup.grad_accum).backward()
            if memory:
                m["peak in backward"] = memory.peak()
            del out, loss
        if memory:
            memory.reset()
        with _phase("optimizer step"):
            scaler.step(optimizer)
            scaler.update()
        if memory:
            m["peak in optimizer step"] = memory.peak()
        optimizer.zero_grad(set_to_none=True)
        if memory:
            m["steady state after step 2"] = memory.now()
    if memory:
        m["peak"] = max(m["peak in forward"], m["peak in backward"], m["peak in optimizer step"])
    return m


def _warm_up(device: torch.device) -> None:
    """Run a matmul in each dtype and an SDPA call so cuBLAS / cuBLASLt workspaces (allocated through the caching
    allocator on first use) exist before the baseline is read and are not counted as the model's memory."""
    a = torch.randn(64, 64, device=device)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        b = a.to(dtype)
        (b @ b).sum().item()
    q = torch.randn(1, 2, 64, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    del a, b, q
    torch.cuda.synchronize()


def _phase(name: str):
    """A profiler range named ``minift.memory:<name>`` (read by ``timeline.py``; free when not profiling)."""
    return torch.profiler.record_function(f"minift.memory:{name}")


class _sdpa:
    """``sdpa_kernel(backend)`` when a backend is forced, else nothing."""

    def __init__(self, backend):
        self.ctx = torch.nn.attention.sdpa_kernel(backend) if backend is not None else None

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx else False
