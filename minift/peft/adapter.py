"""Bottleneck adapters (Houlsby and Pfeiffer placements).

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", https://arxiv.org/abs/1902.00751 (Section 2.1,
Figure 2): a bottleneck ``h + up(act(down(h)))`` after the attention output projection and after the feed-forward
output projection, initialised near the identity. Pfeiffer et al., "AdapterFusion",
https://arxiv.org/abs/2005.00247 (Section 4.1): one adapter per block, after the feed-forward only.

An adapter wraps a sub-layer's *output module*: ``AdapterLinear`` is an ``nn.Linear`` that keeps that module's
``weight`` / ``bias`` (same parameter objects, so no checkpoint key moves) and passes its output through the
bottleneck. The output then goes on to the block's own dropout, residual add and norm, as in Houlsby's Figure 2.
The up projection starts at exactly zero, so at initialisation the adapted model equals the base model.

The bottleneck after the base layer is ``AdapterPath``, mixed into a base linear class: ``AdapterLinear =
AdapterPath + nn.Linear`` and ``AdapterNF4Linear = AdapterPath + NF4Linear`` (a 4-bit frozen base, QLoRA §3; the
bottleneck's own linears train, so they stay in full precision). ``minift.peft.apply`` picks the class from the
type of the output module.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from minift.peft.config import ADAPTER_PLACEMENTS
from minift.quant.linear import NF4Linear
from minift.quant.nf4 import BLOCK_SIZE, DOUBLE_BLOCK_SIZE

# the modules of minift.peft.config.ADAPTER_ACTIVATIONS
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


class Bottleneck(nn.Module):
    """``h + up(act(down(h)))``: a residual bottleneck MLP.

    Args:
        hidden_size: width ``C`` of the hidden states.
        size: bottleneck width ``m``.
        activation: one of ``relu``, ``gelu``, ``tanh``, ``silu``.

    ``down``: (m, C) Kaiming-uniform as ``nn.Linear``; ``up``: (C, m) and its bias at zero, so the block starts as
    the identity.
    """

    def __init__(self, hidden_size: int, size: int, activation: str = "relu", device=None, dtype=None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown adapter activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"adapter bottleneck size must be a positive integer, got {size!r}")
        self.down = nn.Linear(hidden_size, size, device=device, dtype=dtype)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, hidden_size, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h: (..., C) -> (..., C)."""
        return h + self.up(self.act(self.down(h)))  # (..., m) inside


class AdapterPath:
    """A bottleneck ``adapter`` after the base layer's output, mixed in front of a base linear class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C_in) -> (..., C_out)."""
        return self.adapter(super().forward(x))  # (..., C_out)

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """The parameters the adapter trains, by name relative to this module."""
        return {f"adapter.{name}": p for name, p in self.adapter.named_parameters()}


class AdapterLinear(AdapterPath, nn.Linear):
    """A sub-layer's output projection followed by a bottleneck adapter: ``adapter(x W^T + b)``.

    Built with ``AdapterLinear.from_linear(linear, size, activation)``; the base ``weight`` / ``bias`` are the
    original parameter objects, the new parameters live under ``adapter.down`` / ``adapter.up``.
    """

    def __init__(self, in_features: int, out_features: int, size: int, activation: str = "relu",
                 bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.adapter = Bottleneck(out_features, size, activation, device=device, dtype=dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, size: int, activation: str = "relu") -> AdapterLinear:
        """Wrap an existing ``nn.Linear`` without copying its weights; the adapter is created on its device/dtype."""
        if type(linear) is not nn.Linear:
            raise TypeError(f"AdapterLinear.from_linear expects a plain nn.Linear, got {type(linear).__name__}")
        new = cls(linear.in_features, linear.out_features, size, activation, bias=linear.bias is not None,
                  device="meta", dtype=linear.weight.dtype)
        new.weight = linear.weight
        new.bias = linear.bias
        new.adapter = Bottleneck(linear.out_features, size, activation,
                                 device=linear.weight.device, dtype=linear.weight.dtype)
        new.train(linear.training)
        return new


class AdapterNF4Linear(AdapterPath, NF4Linear):
    """An ``NF4Linear`` output projection followed by a bottleneck adapter: ``adapter(x dequant(W)^T + b)``.

    Args: ``in_features``, ``out_features``, ``size``, ``activation``, ``bias`` as ``AdapterLinear``; then
    ``NF4Linear``'s block sizes, ``device``, ``dtype`` (the adapter's and the bias's) and ``compute_dtype``.
    """

    def __init__(self, in_features: int, out_features: int, size: int, activation: str = "relu", bias: bool = True,
                 block_size: int = BLOCK_SIZE, double_quant: bool = True, double_block_size: int = DOUBLE_BLOCK_SIZE,
                 device=None, dtype=None, compute_dtype: torch.dtype | None = None):
        super().__init__(in_features, out_features, bias, block_size, double_quant, double_block_size, device, dtype,
                         compute_dtype)
        self.adapter = Bottleneck(out_features, size, activation, device=device, dtype=self.dtype)

    @classmethod
    def from_nf4(cls, layer: NF4Linear, size: int, activation: str = "relu") -> AdapterNF4Linear:
        """The adapter after ``layer``: the same codes, scales and bias tensors (no copy); the bottleneck is created
        on the codes' device in the layer's ``dtype``."""
        if type(layer) is not NF4Linear:
            raise TypeError(f"AdapterNF4Linear.from_nf4 expects a plain NF4Linear, got {type(layer).__name__}")
        new = cls(layer.in_features, layer.out_features, size, activation, bias=False, block_size=layer.block_size,
                  double_quant=layer.double_quant, double_block_size=layer.double_block_size, device="meta",
                  dtype=layer.dtype)
        new.use_weight_of(layer)
        new.adapter = Bottleneck(layer.out_features, size, activation, device=layer.weight_codes.device,
                                 dtype=layer.dtype)
        return new


def adapter_param_count(hidden_size: int, size: int, num_layers: int, placement: str) -> int:
    """Parameters added by adapters: per adapter ``2 * C * m + m + C`` (down and up, with biases)."""
    return len(ADAPTER_PLACEMENTS[placement]) * num_layers * (2 * hidden_size * size + size + hidden_size)
