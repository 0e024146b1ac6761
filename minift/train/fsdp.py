"""Fully sharded data parallelism under ``torchrun --shard fsdp``: PyTorch's FSDP2 (``fully_shard``), wrapped the
way torchtune and torchtitan wrap a transformer — each block of ``model.blocks`` is one unit, then the root (the
embeddings, the final norm, the head, a soft prompt). Each process keeps 1/N of every parameter (a ``DTensor``
sharded on dim 0), of its gradient and of its AdamW states; a unit's parameters are all-gathered for its forward
and again for its backward, and its gradients reduce-scattered right after.

- **Mixed ``requires_grad`` in one unit** (LoRA's A/B beside a frozen base weight, an adapter, BitFit's biases): FSDP2
  shards each parameter on its own (no flat parameter, unlike FSDP1's ``use_orig_params=False``), so frozen and
  trainable parameters share a unit and both are sharded; frozen ones get no gradient and no reduce-scatter. The
  optimizer holds the trainable shards only.
- **A 4-bit base** (``--quantize nf4``, QLoRA): an ``NF4Linear`` keeps its codes and scales as buffers, and FSDP2
  shards parameters only, so every process holds the whole 4-bit base; the embeddings, norms, head and the LoRA
  parameters are sharded as usual (``minift.memory`` counts it that way).
- **Precision** (``MixedPrecisionPolicy``): under ``--precision bf16`` / ``fp16`` the sharded parameters stay fp32
  (the master copy the optimizer updates) and are all-gathered in the autocast dtype, so autocast has nothing left
  to copy; gradients are reduce-scattered in fp32. ``fp32`` and ``bf16-pure`` gather the parameters as stored.
- **Whole tensors for the run folder**: the checkpoint and best/ files hold whole tensors, as a single-process run
  writes them. :func:`gathered` all-gathers the named parameters and, on process 0, puts the whole CPU tensors in
  the model while the existing writers (``save_checkpoint``, ``save_weights``) run; :func:`loading` gives every
  process whole tensors to load into, then keeps its own shard of what was written. No pickled
  distributed-checkpoint metadata: the files are the single-process ones, whatever the number of processes.
- **Evaluation in lockstep**: a unit's forward is a collective, so every process must run the same number of
  forwards. :class:`Lockstep` makes any evaluation safe: before each forward the processes agree (one all-reduce)
  that some process still has work; a process that has finished serves one-token stand-in forwards until all have.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from minift.precision import autocast_dtype
from minift.train import distributed


def precision_policy(precision: str) -> MixedPrecisionPolicy:
    """The FSDP2 policy of a ``minift.precision`` name: gather in the autocast dtype and reduce gradients in fp32
    (bf16 / fp16), or gather and reduce in the parameters' own dtype (fp32, bf16-pure)."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def shard_model(model: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Shard ``model`` in place over every process (``fully_shard`` per block of ``model.blocks``, then the root).

    The model must be on ``device`` with its fine-tuning method applied; the optimizer is built afterwards, on the
    sharded parameters. Returns the model (the same object, now an ``FSDPModule``)."""
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    policy = precision_policy(precision)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)  # the root: embeddings, final norm, head, soft prompt
    return model


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def reshard(model: nn.Module) -> None:
    """Put every unit back in its sharded state (the root keeps its gathered parameters after a forward that has no
    backward, e.g. an evaluation)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def local_param_bytes(model: nn.Module) -> int:
    """Bytes of the weights this process holds: its shards of the parameters under FSDP (every parameter otherwise),
    plus a 4-bit base's codes and scales, whole on every process (they are buffers, which FSDP2 does not shard)."""
    from minift.quant import nf4_layers

    params = sum(_local(p).numel() * p.element_size() for p in model.parameters())
    return params + sum(layer.nbytes for layer in nf4_layers(model).values())


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _whole(tensor: torch.Tensor, keep: bool = True) -> torch.Tensor | None:
    """The whole tensor of a shard on the CPU (an all-gather: every process calls it, in the same order); None on a
    process that does not ``keep`` it (the gathered copy is dropped at once)."""
    whole = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.detach()
    return whole.cpu() if keep else None


def _swap(model: nn.Module, replacements: dict) -> dict:
    """Register ``replacements[id(param)]`` in place of each such parameter, wherever it is registered (a tied
    weight in two modules too); returns what to pass to :func:`_swap` to undo it."""
    undo = {}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and id(param) in replacements:
                new = replacements[id(param)]
                module._parameters[name] = new
                undo[id(new)] = param
    return undo


def _named(model: nn.Module, names) -> dict:
    params = dict(model.named_parameters())
    return {name: params[name] for name in names if name in params}


@contextlib.contextmanager
def gathered(model: nn.Module, names):
    """While the block runs, process 0's model holds the parameters ``names`` as whole CPU tensors (with their
    ``requires_grad``), so that code written for an unsharded model saves them; the other processes take part in the
    all-gathers only. Every process enters it. Without sharding it does nothing."""
    if not is_sharded(model):
        yield model
        return
    reshard(model)
    replacements = {}
    for param in _named(model, names).values():
        whole = _whole(param, keep=distributed.is_main())
        if whole is not None:
            replacements[id(param)] = nn.Parameter(whole, requires_grad=param.requires_grad)
    undo = _swap(model, replacements)
    try:
        yield model
    finally:
        _swap(model, undo)


@contextlib.contextmanager
def loading(model: nn.Module, names):
    """While the block runs, every process's model holds the parameters ``names`` as whole CPU tensors (their current
    values, gathered) for code written for an unsharded model to load into; afterwards each process keeps its own
    shard of what was written. Every process enters it. Without sharding it does nothing."""
    if not is_sharded(model):
        yield model
        return
    reshard(model)
    named = _named(model, names)
    replacements = {id(p): nn.Parameter(_whole(p), requires_grad=p.requires_grad) for p in named.values()}
    undo = _swap(model, replacements)
    try:
        yield model
    finally:
        _swap(model, undo)
        with torch.no_grad():
            for param in named.values():
                param.to_local().copy_(as_shard(replacements[id(param)].detach(), param).to_local())


def as_shard(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``whole`` (on every process) as a DTensor placed like ``like`` (this process's part, no communication); a
    plain tensor when ``like`` is not sharded or the shapes differ (the caller's checks then say so)."""
    if not isinstance(like, DTensor) or tuple(whole.shape) != tuple(like.shape):
        return whole
    whole = whole.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def whole_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor gathered whole onto the CPU of process 0 (every
    process calls it; the others get None in their place). Index-keyed as a single-process optimizer's, so the
    files do not depend on the number of processes."""
    state = optimizer.state_dict()  # its per-parameter dicts are the optimizer's own: copied, never changed
    whole = {}
    for index in sorted(state["state"]):
        entries = state["state"][index]
        whole[index] = {key: _whole(entries[key], keep=distributed.is_main()) if isinstance(entries[key], DTensor)
                        else entries[key] for key in sorted(entries)}
    return {**state, "state": whole}


def as_shards(model: nn.Module, whole: dict, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Whole tensors read from the files, placed like what they load into (no communication): ``whole`` by
    parameter name, or with ``optimizer`` an index-keyed optimizer state dict. Unchanged without sharding."""
    if not is_sharded(model):
        return whole
    if optimizer is None:
        params = dict(model.named_parameters())
        return {name: as_shard(t, params[name]) if name in params else t for name, t in whole.items()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    states = {}
    for index, entries in whole["state"].items():
        like = params[index] if 0 <= index < len(params) else None
        states[index] = {key: (as_shard(value, like) if like is not None and torch.is_tensor(value) else value)
                         for key, value in entries.items()}
    return {**whole, "state": states}


class Lockstep:
    """Run evaluation code unchanged on a sharded model, each process on its own data (or only process 0).

    Inside ``with Lockstep(model, device):`` every forward of ``model`` first agrees with the other processes that
    some process still has work (an all-reduce of one flag); on leaving, a process serves one-token stand-in forwards
    until every process has left. So the processes run the same number of forwards — the FSDP units' all-gathers
    pair up — whatever each one evaluates: different batch counts, generation that stops early at EOS. Without
    sharding it does nothing.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device
        self.active = is_sharded(model) and distributed.world_size() > 1
        self.serving, self.handle = False, None

    def __enter__(self) -> Lockstep:
        if self.active:  # before FSDP's own pre-forward hook, which all-gathers the root
            self.handle = self.model.register_forward_pre_hook(self._before, prepend=True)
        return self

    def _before(self, module, args) -> None:
        if not self.serving:
            self._agree(True)

    def _agree(self, working: bool) -> bool:
        flag = torch.tensor([1.0 if working else 0.0], device=distributed.collective_device())
        dist.all_reduce(flag)
        return bool(flag.item())

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        try:
            if exc[0] is None:  # after an error the others cannot be served; the error ends the run
                self._serve()
        finally:
            self.handle.remove()
            reshard(self.model)

    @torch.no_grad()
    def _serve(self) -> None:
        was_training = self.model.training
        self.model.eval()
        stand_in = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.serving = True
        try:
            while self._agree(False):
                self.model(input_ids=stand_in)
        finally:
            self.serving = False
            self.model.train(was_training)
