"""LoRA: a low-rank update ``W + (alpha / r) * B @ A`` beside a frozen ``nn.Linear``.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685.
Section 4.1: ``A`` gets a random Gaussian-like initialisation and ``B`` starts at zero, so the adapted layer
equals the base layer at initialisation; the update is scaled by ``alpha / r`` so that changing ``r`` does not
require retuning the learning rate.

The side path (``r``, ``alpha``, ``lora_A``, ``lora_B``, the dropout, its initialisation, ``delta_weight`` and
``adapter_params``) is ``LoRAPath``, mixed into a base linear class:

- ``LoRALinear = LoRAPath + nn.Linear``: it *is* an ``nn.Linear`` and keeps the base ``weight`` / ``bias`` as its
  own parameters (the very same ``nn.Parameter`` objects), so swapping it into a model moves no checkpoint key; it
  only adds ``<name>.lora_A`` and ``<name>.lora_B``. One class serves every family: GPT-2's fused ``c_attn`` (an
  HF ``Conv1D``) is an ``nn.Linear`` in minift because its weight is transposed when the checkpoint is loaded.
  Explicit, idempotent ``merge()`` / ``unmerge()``.
- ``LoRANF4Linear = LoRAPath + NF4Linear``: QLoRA (Dettmers et al., https://arxiv.org/abs/2305.14314, §3, Eq. 5),
  ``Y = X doubleDequant(c1, c2, W^NF4) + X L1 L2``: the same side path on a 4-bit frozen base. Its LoRA
  parameters have the same local names, so a QLoRA run's trainable state has exactly the keys of the bf16 LoRA
  run and loads onto the unquantised model. It never merges in place (the update cannot be folded into 4-bit
  codes without requantising it away): ``merged_linear()`` gives the fp ``nn.Linear`` with the update added in
  fp32, which is what a merged export writes.

``minift.peft.apply`` picks the class from the type of the layer it adapts.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minift.models.dropout import Dropout
from minift.quant.linear import NF4Linear
from minift.quant.nf4 import BLOCK_SIZE, DOUBLE_BLOCK_SIZE


class LoRAPath:
    """LoRA's side path, mixed in front of a base linear class (``nn.Linear`` or ``NF4Linear``).

    ``y = base(x) + (alpha / r) * dropout(x) A^T B^T``. The concrete class builds its base, then calls
    ``init_lora``. ``lora_A`` (r, C_in) is initialised like peft / the LoRA reference code (Kaiming-uniform with
    ``a = sqrt(5)``), ``lora_B`` (C_out, r) at zeros.
    """

    merged = False  # whether the update is folded into the base weight (only LoRALinear ever merges)

    def init_lora(self, r: int, alpha: float, dropout: float, device=None, dtype=None) -> None:
        """Create the side path's parameters on ``device`` in ``dtype`` (checks ``r`` and ``dropout``)."""
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
        self.r = r
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, device=device, dtype=dtype))
        self.lora_dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """``A``: Kaiming-uniform (a=sqrt(5)) as peft and the LoRA reference code; ``B``: zeros (so the update is 0)."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C_in) -> (..., C_out)."""
        y = super().forward(x)  # (..., C_out), the base layer
        if self.merged:
            return y
        h = F.linear(self.lora_dropout(x), self.lora_A)  # (..., r)
        # one fused y + scaling * h B^T: no separate (..., C_out) scale and add
        out = torch.addmm(y.reshape(-1, self.out_features), h.reshape(-1, self.r), self.lora_B.t(), alpha=self.scaling)
        return out.view(y.shape)  # (..., C_out)

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / r) * B @ A``, (C_out, C_in), computed in fp32 (cast by the caller)."""
        return (self.lora_B.detach().float() @ self.lora_A.detach().float()) * self.scaling

    def adapter_params(self) -> dict[str, nn.Parameter]:
        """The parameters LoRA trains, by local name."""
        return {"lora_A": self.lora_A, "lora_B": self.lora_B}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


class LoRALinear(LoRAPath, nn.Linear):
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

    Parameters: ``weight`` (C_out, C_in) and ``bias`` (C_out,) of the base layer; ``lora_A`` (r, C_in) and
    ``lora_B`` (C_out, r) (``LoRAPath``).
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
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.merged = False
        self.init_lora(r, alpha, dropout, device, dtype)

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
        new.init_lora(r, alpha, dropout, linear.weight.device, linear.weight.dtype)
        new.train(linear.training)
        return new

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

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's ``weight`` / ``bias`` (``merge()`` first to keep the update)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias
        linear.train(self.training)
        return linear


class LoRANF4Linear(LoRAPath, NF4Linear):
    """``NF4Linear`` + LoRA: ``y = x dequant(W)^T + b + (alpha / r) * dropout(x) A^T B^T`` (QLoRA, Eq. 5).

    Args: ``in_features``, ``out_features``, ``r``, ``alpha``, ``dropout``, ``bias`` as ``LoRALinear``; then
    ``NF4Linear``'s block sizes, ``device``, ``dtype`` (the LoRA matrices' and the bias's) and ``compute_dtype``.
    Usually built with ``from_nf4(layer, ...)``; constructing it directly (e.g. on the meta device, then
    ``load_state_dict``) gives LoRA's initialisation. The 4-bit weight never changes.
    """

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float = 0.0,
                 bias: bool = True, block_size: int = BLOCK_SIZE, double_quant: bool = True,
                 double_block_size: int = DOUBLE_BLOCK_SIZE, device=None, dtype=None,
                 compute_dtype: torch.dtype | None = None):
        super().__init__(in_features, out_features, bias, block_size, double_quant, double_block_size, device, dtype,
                         compute_dtype)
        self.init_lora(r, alpha, dropout, device, self.dtype)

    @classmethod
    def from_nf4(cls, layer: NF4Linear, r: int, alpha: float, dropout: float = 0.0) -> LoRANF4Linear:
        """LoRA on ``layer``: the same codes, scales and bias tensors (no copy); the LoRA matrices are created on
        the codes' device in the layer's ``dtype``."""
        if type(layer) is not NF4Linear:
            raise TypeError(f"LoRANF4Linear.from_nf4 expects a plain NF4Linear, got {type(layer).__name__}")
        new = cls(layer.in_features, layer.out_features, r, alpha, dropout, bias=False, block_size=layer.block_size,
                  double_quant=layer.double_quant, double_block_size=layer.double_block_size, device="meta",
                  dtype=layer.dtype)
        new.use_weight_of(layer)
        new.init_lora(r, alpha, dropout, layer.weight_codes.device, layer.dtype)
        return new

    def merge(self) -> None:
        raise NotImplementedError("a 4-bit base cannot absorb the LoRA update; use merged_linear() for export "
                                  "(minift.peft.save_merged does)")

    def unmerge(self) -> None:
        """Nothing to undo: the layer is never merged."""

    @torch.no_grad()
    def merged_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A plain ``nn.Linear`` with ``dequant(W) + (alpha / r) B A`` summed in fp32, then cast to ``dtype``
        (default: the layer's ``dtype``)."""
        linear = self.to_linear(torch.float32)
        linear.weight += self.delta_weight()
        return linear.to(dtype or self.dtype)
