"""minift.quant: QLoRA's 4-bit NormalFloat base (Dettmers et al., "QLoRA", https://arxiv.org/abs/2305.14314, §3).

- ``nf4.py``: the NF4 code values, ``quantize_nf4`` / ``dequantize_nf4`` (block-wise absmax, optional double
  quantisation), ``nf4_bytes`` (the byte cost).
- ``linear.py``: ``NF4Linear``, a frozen linear layer stored as NF4 buffers, dequantised per matmul.
- ``lora.py``: LoRA and bottleneck adapters on an ``NF4Linear`` base (prototype of the PEFT integration).
- here: ``quantize_model`` swaps the linear layers of a model's transformer blocks for NF4 ones;
  ``quantized_bytes`` counts what the model's tensors occupy.

Embeddings, norms, the task head and the LM head stay in full precision, as QLoRA and peft's
``prepare_model_for_kbit_training`` leave them: only the linear layers inside ``model.blocks`` are quantised.
"""
from __future__ import annotations

import itertools

from torch import nn

from minift.peft.apply import find_peft_spec
from minift.quant.linear import NF4Linear
from minift.quant.lora import NF4_PEFT_LAYERS, AdapterNF4Linear, LoRANF4Linear, to_nf4
from minift.quant.nf4 import BLOCK_SIZE, NF4Weight, dequantize_nf4, nf4_bytes, nf4_code, quantize_nf4

__all__ = [
    "AdapterNF4Linear",
    "LoRANF4Linear",
    "NF4Linear",
    "NF4Weight",
    "dequantize_nf4",
    "nf4_bytes",
    "nf4_code",
    "nf4_layers",
    "quantize_model",
    "quantize_nf4",
    "quantized_bytes",
]

_QUANTISABLE = (nn.Linear, *NF4_PEFT_LAYERS)


def _base_linears(block: nn.Module) -> list[str]:
    """Names of the block's base linear layers: plain ``nn.Linear`` and fp LoRA / adapter layers, but not the
    linears a PEFT method added (an adapter's ``down`` / ``up`` train, so they stay in full precision)."""
    names, peft_owned = [], []
    for name, module in block.named_modules():
        if any(name.startswith(owner + ".") for owner in peft_owned):
            continue
        if callable(getattr(type(module), "adapter_params", None)):
            peft_owned.append(name)
        if type(module) in _QUANTISABLE:
            names.append(name)
    return names


def quantize_model(model: nn.Module, targets: list[str] | None = None, block_size: int = BLOCK_SIZE,
                   double_quant: bool = True) -> nn.Module:
    """Swap the linear layers of ``model.blocks`` for ``NF4Linear`` layers in place, one layer at a time.

    Each layer's weight is quantised on its own device, and the full-precision weight is dropped as soon as its
    layer is replaced, so the model never holds more than one extra fp weight. A ``LoRALinear`` or
    ``AdapterLinear`` (from ``minift.peft.apply``) becomes its NF4 counterpart with the same trainable parameters.

    Args:
        model: a ``TaskModel`` (or a ``PromptModel`` around one): anything with ``blocks``.
        targets: module names (or dotted suffixes, as LoRA targets) inside a block to quantise; None: every
            linear layer of every block.
        block_size: weights per absmax block (64).
        double_quant: quantise the absmax to 8 bits as well (§3).

    Returns:
        ``model`` itself.

    Raises:
        ValueError: a target matches no linear layer, or a weight chosen to train (``requires_grad`` after
            ``peft.apply``) would be frozen by quantisation.
    """
    spec = find_peft_spec(model)
    names = [[name for name in _base_linears(block) if _wanted(name, targets)] for block in model.blocks]
    if targets is not None:
        found = {t for t in targets if any(_wanted(name, [t]) for name in itertools.chain(*names))}
        if set(targets) - found:
            known = sorted({name.rpartition(".")[2] for block in model.blocks for name in _base_linears(block)})
            raise ValueError(f"quantize targets {sorted(set(targets) - found)} match no linear layer of the blocks; "
                             f"their linear layers are {known}")
    for block, block_names in zip(model.blocks, names):
        for name in block_names:
            parent_name, _, child = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            old = getattr(parent, child)
            if spec is not None and old.weight.requires_grad:
                raise ValueError(f"{name}.weight trains under {spec.name!r}; only frozen weights can be quantised")
            trains_bias = spec is not None and old.bias is not None and old.bias.requires_grad  # BitFit
            new = to_nf4(old, block_size, double_quant)
            if trains_bias:
                new.bias.requires_grad_(True)
            setattr(parent, child, new)
            del old  # the last reference to the fp weight: freed here, before the next layer is quantised
    return model


def _wanted(name: str, targets: list[str] | None) -> bool:
    return targets is None or any(name == t or name.endswith("." + t) for t in targets)


def quantized_bytes(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers (shared ones once): NF4 codes and scales for the quantised
    layers, full precision for the rest. Works on the meta device (arithmetic on shapes and dtypes)."""
    tensors = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def nf4_layers(model: nn.Module) -> dict[str, NF4Linear]:
    """Every ``NF4Linear`` of ``model`` (LoRA / adapter ones included), by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, NF4Linear)}

