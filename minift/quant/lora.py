"""Prototype: PEFT layers on an ``NF4Linear`` base (QLoRA, Dettmers et al., https://arxiv.org/abs/2305.14314, §3).

QLoRA (Eq. 5) is ``Y = X doubleDequant(c1, c2, W^NF4) + X L1 L2``: LoRA's side path unchanged, on a base whose
weight is 4-bit. So the LoRA (and bottleneck-adapter) layers here *are* ``NF4Linear`` layers with the side path of
``minift.peft.lora.LoRALinear`` / ``minift.peft.adapter.AdapterLinear`` added: their parameters keep the same local
names (``lora_A``, ``lora_B``, ``adapter.down``, ``adapter.up``), so an adapter trained on a 4-bit base saves and
loads exactly like one trained on the bf16 base, and ``adapter_params()`` tells ``peft.apply`` what trains.

This file borrows the side path's methods from the ``minift.peft`` classes (they only touch ``lora_A`` / ``lora_B``
/ ``adapter``). Proposed final form: the side path becomes a mixin in ``minift/peft/lora.py`` (and
``adapter.py``) used by both the fp and the NF4 layer; see the issue 11 report.

``from_peft(layer)`` turns an fp ``LoRALinear`` / ``AdapterLinear`` (as ``peft.apply`` builds them) into the NF4
version, quantising its base weight and keeping the very same trainable parameter objects (and their
``requires_grad``); ``minift.quant.quantize_model`` calls it, so ``apply(model, "lora")`` then
``quantize_model(model)`` works without any change to ``minift.peft``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minift.peft.adapter import AdapterLinear, Bottleneck
from minift.peft.lora import LoRALinear
from minift.quant.linear import NF4Linear
from minift.quant.nf4 import BLOCK_SIZE, DOUBLE_BLOCK_SIZE


class LoRANF4Linear(NF4Linear):
    """``NF4Linear`` + LoRA: ``y = x dequant(W)^T + b + (alpha / r) * dropout(x) A^T B^T``.

    Args: those of ``NF4Linear``, then ``r``, ``alpha``, ``dropout`` as ``LoRALinear``. Usually built with
    ``from_peft(lora_linear)``; constructing it directly (e.g. on the meta device, then ``load_state_dict``) gives
    LoRA's initialisation. ``lora_A`` (r, C_in) and ``lora_B`` (C_out, r) are trainable parameters in the compute
    dtype; the 4-bit weight never changes. There is no in-place ``merge`` (the update cannot be folded into 4-bit
    codes without requantising it away): ``merged_linear`` gives the fp ``nn.Linear`` with the update added in
    fp32, which is what a merged export writes.
    """

    merged = False  # never merged in place; LoRALinear's code reads this flag
    reset_lora_parameters = LoRALinear.reset_lora_parameters
    delta_weight = LoRALinear.delta_weight
    adapter_params = LoRALinear.adapter_params

    def __init__(self, in_features: int, out_features: int, bias: bool = True, block_size: int = BLOCK_SIZE,
                 double_quant: bool = True, double_block_size: int = DOUBLE_BLOCK_SIZE, device=None, dtype=None, *,
                 r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__(in_features, out_features, bias, block_size, double_quant, double_block_size, device, dtype)
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=self.compute_dtype))
        self.lora_B = nn.Parameter(torch.empty(out_features, r, device=device, dtype=self.compute_dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    @classmethod
    def from_peft(cls, layer: LoRALinear, block_size: int = BLOCK_SIZE, double_quant: bool = True) -> LoRANF4Linear:
        """Quantise ``layer``'s base weight; ``lora_A``, ``lora_B``, the dropout and the bias move over as they are."""
        if layer.merged:
            raise ValueError("unmerge the LoRA layer before quantising its base (the update would be frozen into it)")
        new = cls.from_linear(layer, block_size, double_quant)  # built on meta with throwaway LoRA matrices
        new.r, new.alpha, new.scaling = layer.r, layer.alpha, layer.scaling
        new.lora_A, new.lora_B, new.lora_dropout = layer.lora_A, layer.lora_B, layer.lora_dropout
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C_in) -> (..., C_out)."""
        y = super().forward(x)  # (..., C_out), the 4-bit base in the compute dtype
        # the side path runs in the base's compute dtype too, so fp32 LoRA matrices work beside a bf16 input
        h = F.linear(self.lora_dropout(x).to(y.dtype), self.lora_A.to(y.dtype))  # (..., r)
        # LoRALinear's fused y + scaling * h B^T
        out = torch.addmm(y.reshape(-1, self.out_features), h.reshape(-1, self.r), self.lora_B.t().to(y.dtype),
                          alpha=self.scaling)
        return out.view(y.shape)  # (..., C_out)

    def merge(self) -> None:
        raise NotImplementedError("a 4-bit base cannot absorb the LoRA update; use merged_linear() for export")

    @torch.no_grad()
    def merged_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A plain ``nn.Linear`` with ``dequant(W) + (alpha / r) B A`` summed in fp32 and then cast to ``dtype``."""
        linear = self.to_linear(torch.float32)
        linear.weight += self.delta_weight()
        return linear.to(dtype or self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha:g}"


class AdapterNF4Linear(NF4Linear):
    """``NF4Linear`` followed by a bottleneck adapter: ``adapter(x dequant(W)^T + b)`` (Houlsby / Pfeiffer).

    Args: those of ``NF4Linear``, then the bottleneck's ``size`` and ``activation`` (``minift.peft.adapter``).
    """

    adapter_params = AdapterLinear.adapter_params

    def __init__(self, in_features: int, out_features: int, bias: bool = True, block_size: int = BLOCK_SIZE,
                 double_quant: bool = True, double_block_size: int = DOUBLE_BLOCK_SIZE, device=None, dtype=None, *,
                 size: int = 64, activation: str = "relu"):
        super().__init__(in_features, out_features, bias, block_size, double_quant, double_block_size, device, dtype)
        self.adapter = Bottleneck(out_features, size, activation, device=device, dtype=self.compute_dtype)

    @classmethod
    def from_peft(cls, layer: AdapterLinear, block_size: int = BLOCK_SIZE,
                  double_quant: bool = True) -> AdapterNF4Linear:
        """Quantise ``layer``'s base weight; its ``adapter`` (the bottleneck) moves over as it is."""
        new = cls.from_linear(layer, block_size, double_quant)
        new.adapter = layer.adapter
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C_in) -> (..., C_out)."""
        y = super().forward(x)  # (..., C_out)
        return self.adapter(y)


# fp PEFT layer type → its NF4 counterpart (checked before plain nn.Linear: both are nn.Linear subclasses)
NF4_PEFT_LAYERS = {LoRALinear: LoRANF4Linear, AdapterLinear: AdapterNF4Linear}


def to_nf4(module: nn.Linear, block_size: int = BLOCK_SIZE, double_quant: bool = True) -> NF4Linear:
    """The NF4 counterpart of a plain ``nn.Linear``, a ``LoRALinear`` or an ``AdapterLinear``."""
    peft_class = NF4_PEFT_LAYERS.get(type(module))
    if peft_class is not None:
        return peft_class.from_peft(module, block_size, double_quant)
    if type(module) is not nn.Linear:
        raise TypeError(f"no NF4 counterpart for {type(module).__name__}")
    return NF4Linear.from_linear(module, block_size, double_quant)
