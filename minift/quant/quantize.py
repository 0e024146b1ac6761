"""Quantising a model's frozen base: which layers, with which options, and while its checkpoint is read.

QLoRA (Dettmers et al., https://arxiv.org/abs/2305.14314, §3) stores the frozen linear layers of the transformer
blocks in NF4; embeddings, norms, the task head and the LM head stay in full precision, as QLoRA and peft's
``prepare_model_for_kbit_training`` leave them.

- ``NF4Config``: the options (block sizes, double quantisation, compute dtype, which linears), one object passed
  whole (``minift.models.load_pretrained(path, quantize=NF4Config(...))``; ``quantize="nf4"`` is the default one).
- ``quantize_model(model, config)``: swaps the block linears of a built model for ``NF4Linear`` layers, one layer
  at a time (on the meta device it only changes the structure: the estimator counts bytes that way).
- ``StateQuantizer``: quantisation while loading. ``minift.models.load`` reads a checkpoint tensor by tensor and
  hands each one to the quantizer, which turns a block linear's weight into its NF4 buffers at once, so the full
  precision copy of the model never exists: peak host memory is the 4-bit model plus one tensor.

Quantisation is a storage format of the frozen base, not a PEFT method: it happens before ``minift.peft.apply``,
which then puts LoRA / adapters on the ``NF4Linear`` layers (``minift.peft.lora.LoRANF4Linear``). This package
imports nothing from ``minift.peft``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from minift.quant.linear import BUFFERS, NF4Linear
from minift.quant.nf4 import BLOCK_SIZE, DOUBLE_BLOCK_SIZE, quantize_nf4

QUANTIZE_FORMATS = ("nf4",)


@dataclass(frozen=True)
class NF4Config:
    """How the frozen base is stored in NF4 (QLoRA §3)."""

    block_size: int = BLOCK_SIZE  # weights per absmax (64 in the paper)
    double_quant: bool = True  # also quantise the absmax to 8 bits in blocks of 256 (§3 "Double Quantization")
    double_block_size: int = DOUBLE_BLOCK_SIZE  # absmax values per 8-bit scale
    compute_dtype: torch.dtype | None = None  # dequantised weight and matmul dtype; None: the model's dtype
    targets: tuple[str, ...] | None = None  # linear names (or dotted suffixes) inside a block; None: all of them

    def __post_init__(self):
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))


def nf4_config(quantize: str | NF4Config | None) -> NF4Config | None:
    """``"nf4"`` → the default ``NF4Config``, a config → itself, None → None (``load_pretrained``'s argument)."""
    if quantize is None or isinstance(quantize, NF4Config):
        return quantize
    if quantize not in QUANTIZE_FORMATS:
        raise ValueError(f"unknown quantization {quantize!r}; minift stores frozen weights as {QUANTIZE_FORMATS} "
                         "(or pass a minift.quant.NF4Config)")
    return NF4Config()


def compute_dtype_for(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The NF4 compute dtype a run on ``device_type`` with parameters in ``dtype`` uses: bf16 on CUDA (QLoRA's
    compute type, §3; whatever the master weights' dtype), else the parameters' dtype (fp32 or bf16 on CPU, where
    a bf16 matmul is no faster). Under autocast the autocast dtype takes over (``NF4Linear.forward``)."""
    return torch.bfloat16 if device_type == "cuda" else dtype


def _has_peft(model: nn.Module) -> bool:
    # duck-typed so that minift.quant stays below minift.peft: a PEFT module says what it trains
    return "peft_spec" in model.__dict__ or any(callable(getattr(type(m), "adapter_params", None))
                                                for m in model.modules())


def block_linears(model: nn.Module, targets: tuple[str, ...] | None = None) -> dict[str, nn.Linear]:
    """The plain ``nn.Linear`` layers of ``model.blocks`` that ``targets`` choose, by qualified name in ``model``.

    Raises:
        ValueError: a target matches no linear layer of the blocks (the message lists their names).
    """
    names = {id(b): n for n, b in model.named_modules()}
    found, matched, known = {}, set(), set()
    for block in model.blocks:
        for name, m in block.named_modules():
            if type(m) is not nn.Linear:
                continue
            known.add(name.rpartition(".")[2])
            hits = {t for t in targets if name == t or name.endswith("." + t)} if targets is not None else {""}
            if hits:
                found[f"{names[id(block)]}.{name}"] = m
                matched |= hits
    unmatched = sorted(set(targets) - matched) if targets is not None else []
    if unmatched:
        raise ValueError(f"quantize targets {unmatched} match no linear layer of the blocks; their linear layers are "
                         f"{sorted(known)}")
    return found


def quantize_model(model: nn.Module, config: NF4Config | None = None) -> nn.Module:
    """Swap the linear layers of ``model.blocks`` for ``NF4Linear`` layers in place, one layer at a time.

    Each layer's weight is quantised on its own device, and the full-precision weight is dropped as soon as its
    layer is replaced, so the model never holds more than one extra fp weight. On the meta device only the
    structure changes (what the memory estimator counts). Quantise before applying a PEFT method:
    ``minift.peft.apply`` puts LoRA / adapters on the NF4 layers. To load a checkpoint quantised, use
    ``minift.models.load_pretrained(path, quantize="nf4")`` instead: it never holds the fp model.

    Args:
        model: a ``TaskModel`` (anything with ``blocks``) without PEFT.
        config: ``NF4Config`` (default: blocks of 64, double quantisation, every block linear).

    Returns:
        ``model`` itself.

    Raises:
        ValueError: a PEFT method is already applied, or a target matches no linear layer.
    """
    config = config or NF4Config()
    if _has_peft(model):
        raise ValueError("quantize the frozen base before applying a PEFT method: quantize_model(model) (or "
                         "load_pretrained(..., quantize='nf4')), then minift.peft.apply(model, ...)")
    for name in block_linears(model, config.targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        new = NF4Linear.from_linear(old, config.block_size, config.double_quant, config.compute_dtype)
        setattr(parent, child, new)
        del old  # the last reference to the fp weight: freed here, before the next layer is quantised
    return model


class StateQuantizer:
    """Quantisation while loading: the loader hands each checkpoint tensor to ``convert`` as it is read.

    Built on the model as ``build_model`` made it on the meta device (before any tensor is read). ``convert(key,
    tensor)`` gives the state entries for one key: a block linear's weight becomes its NF4 buffers
    (``<layer>.weight_codes``, ``<layer>.weight_absmax``, ...), quantised from the tensor as stored in the
    checkpoint (no rounding to the load dtype first); anything else passes through. ``finish(model)`` swaps the
    meta model's block linears for ``NF4Linear`` layers so that its state keys are the converted ones.
    """

    def __init__(self, model: nn.Module, config: NF4Config, dtype: torch.dtype):
        self.config, self.dtype = config, dtype
        self.layers = {f"{name}.weight": name for name in block_linears(model, config.targets)}

    def quantizes(self, key: str) -> bool:
        """Whether the checkpoint tensor ``key`` (a model key) is stored in NF4."""
        return key in self.layers

    def convert(self, key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if key not in self.layers:
            return {key: tensor}
        c = self.config
        record = quantize_nf4(tensor, c.block_size, c.double_quant, c.double_block_size)
        prefix = self.layers[key]
        return {f"{prefix}.{name}": getattr(record, field) for name, field in BUFFERS.items()
                if getattr(record, field) is not None}

    def finish(self, model: nn.Module) -> nn.Module:
        """The meta ``model`` with NF4 layers (the parameter dtype is the load dtype), ready for its state."""
        c = self.config
        for name in self.layers.values():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            old = getattr(parent, child)
            new = NF4Linear(old.in_features, old.out_features, old.bias is not None, c.block_size, c.double_quant,
                            c.double_block_size, device="meta", dtype=self.dtype, compute_dtype=c.compute_dtype)
            setattr(parent, child, new)
        return model


def quantized_bytes(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers (shared ones once): NF4 codes and scales for the quantised
    layers, full precision for the rest. Works on the meta device (arithmetic on shapes and dtypes)."""
    tensors = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def nf4_layers(model: nn.Module) -> dict[str, NF4Linear]:
    """Every ``NF4Linear`` of ``model`` (LoRA / adapter ones included), by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NF4Linear)}
