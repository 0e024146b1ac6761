"""LoRA: a low-rank update ``W + (alpha / r) * B @ A`` beside a frozen ``nn.Linear``.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685.
Section 4.1: ``A`` gets a random Gaussian-like initialisation and ``B`` starts at zero, so the adapted layer
equals the base layer at initialisation; the update is scaled by ``alpha / r`` so that changing ``r`` does not
require retuning the learning rate.

``LoRALinear`` *is* an ``nn.Linear``: it keeps the base ``weight`` / ``bias`` as its own parameters (the very
same ``nn.Parameter`` objects), so swapping it into a model moves no checkpoint key; it only adds
``<name>.lora_A`` and ``<name>.lora_B``. One class serves every family: GPT-2's fused ``c_attn`` (an HF
``Conv1D``) is an ``nn.Linear`` in minift because its weight is transposed when the checkpoint is loaded.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a trainable rank-``r`` update on a side path.

    ``y = x W^T + b + (alpha / r) * dropout(x) A^T B^T``.

    Args:
        in_features: input width ``C_in``.
        out_features: output width ``C_out``.
        r: rank of the update (``r >= 1``).
        alpha: scaling numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout probability on the LoRA path's input (the base path never sees it).
        bias: whether the base layer has a bias.
        device, dtype: where and in which dtype to create the parameters.

    Parameters: ``weight`` (C_out, C_in) and ``bias`` (C_out,) of the base layer; ``lora_A`` (r, C_in) initialised
    like peft / the LoRA reference code (Kaiming-uniform with ``a = sqrt(5)``); ``lora_B`` (C_out, r) zeros.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.r = r
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(out_features, r, device=device, dtype=dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora_parameters()

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> LoRALinear:
        """Wrap an existing ``nn.Linear``, reusing its ``weight`` / ``bias`` parameter objects (no copy).

        The LoRA matrices are created on the base weight's device and in its dtype (a base on the meta
        device gives meta LoRA matrices, which is how parameter counts are taken without memory).
        """
        if not isinstance(linear, nn.Linear) or isinstance(linear, LoRALinear):
            raise TypeError(f"LoRALinear.from_linear expects a plain nn.Linear, got {type(linear).__name__}")
        new = cls(
            linear.in_features, linear.out_features, r=r, alpha=alpha, dropout=dropout,
            bias=linear.bias is not None, device="meta", dtype=linear.weight.dtype,
        )
        # Reuse the base parameters so checkpoint keys, requires_grad flags and tied references are unchanged.
        new.weight = linear.weight
        new.bias = linear.bias
        device, dtype = linear.weight.device, linear.weight.dtype
        new.lora_A = nn.Parameter(torch.empty(r, linear.in_features, device=device, dtype=dtype))
        new.lora_B = nn.Parameter(torch.empty(linear.out_features, r, device=device, dtype=dtype))
        new.reset_lora_parameters()
        new.train(linear.training)
        return new

    def reset_lora_parameters(self) -> None:
        """``A``: Kaiming-uniform (a=sqrt(5)) as peft and the LoRA reference code; ``B``: zeros (so the update is 0)."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C_in) -> (..., C_out)."""
        y = F.linear(x, self.weight, self.bias)  # (..., C_out)
        if self.merged:
            return y
        h = F.linear(self.lora_dropout(x), self.lora_A)  # (..., r)
        # one fused y + scaling * h B^T: no separate (..., C_out) scale and add
        out = torch.addmm(y.reshape(-1, self.out_features), h.reshape(-1, self.r), self.lora_B.t(), alpha=self.scaling)
        return out.view(y.shape)  # (..., C_out)

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) * B @ A``, (C_out, C_in), computed in fp32 (cast by the caller)."""
        return (self.lora_B.detach().float() @ self.lora_A.detach().float()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight`` (idempotent). The delta is computed in fp32 and cast back."""
        if self.merged:
            return
        self.weight.copy_((self.weight.float() + self.delta_weight()).to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of ``weight`` (idempotent); exact up to the fp32 rounding of one add/sub."""
        if not self.merged:
            return
        self.weight.copy_((self.weight.float() - self.delta_weight()).to(self.weight.dtype))
        self.merged = False

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """The parameters LoRA trains, by local name."""
        return {"lora_A": self.lora_A, "lora_B": self.lora_B}

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's ``weight`` / ``bias`` (``merge()`` first to keep the update)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias
        linear.train(self.training)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha:g}, merged={self.merged}"
