"""Rotary position embeddings (RoPE) with the rope-scaling variants Llama checkpoints use.

RoPE: Su et al., "RoFormer", https://arxiv.org/abs/2104.09864 (section 3.4).  Pairs of channels are
rotated by an angle ``position * inv_freq``; we use the "rotate half" layout of Hugging Face Llama (channel
``i`` is paired with channel ``i + head_dim / 2``), which is what HF checkpoints expect.

Scaling types (``rope_scaling["rope_type"]``, 4.x also wrote ``"type"``):

- ``"default"`` / None: plain RoPE.
- ``"linear"``: position interpolation, ``inv_freq / factor`` (Chen et al., https://arxiv.org/abs/2306.15595).
- ``"dynamic"``: dynamic NTK, ``theta`` grows once the sequence is longer than ``max_position_embeddings``.
- ``"llama3"``: Llama 3.1 frequency-dependent interpolation (low frequencies divided by ``factor``,
  high frequencies kept, a smooth ramp between), see Meta's ``apply_scaling`` in llama-models.

The inverse frequencies are computed in fp32 on the CPU exactly like ``transformers`` does, and kept as a plain
attribute rather than a buffer: a model built on the meta device would otherwise hold a meta tensor that no
checkpoint fills, and HF checkpoints do not store it either.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


def read_rope_config(d: dict, values: dict) -> None:
    """``rope_theta`` / ``rope_scaling`` from a config dict: 5.x ``rope_parameters`` or 4.x ``rope_theta`` +
    ``rope_scaling`` (4.x first wrote the scaling type as ``"type"``, later ``"rope_type"``). A family's
    ``read_config`` hook for every RoPE family."""
    params = dict(d.get("rope_parameters") or {})
    if not params and d.get("rope_scaling"):
        params = dict(d["rope_scaling"])
    values["rope_theta"] = float(params.pop("rope_theta", d.get("rope_theta") or 10000.0))
    if "type" in params:
        params["rope_type"] = params.pop("type")
    if params.get("rope_type", "default") == "default":
        params.pop("rope_type", None)
    values["rope_scaling"] = params or None


def write_rope_config(config, d: dict) -> None:
    """The inverse of :func:`read_rope_config`, in the form the original dict used (5.x or 4.x)."""
    if "rope_parameters" in d:  # 5.x form
        scaling = config.rope_scaling or {}
        d["rope_parameters"] = {"rope_type": "default", **scaling, "rope_theta": config.rope_theta}
    else:  # 4.x form, which 5.x also reads
        d["rope_theta"], d["rope_scaling"] = config.rope_theta, config.rope_scaling


def rope_type_of(rope_scaling: dict[str, Any] | None) -> str:
    """The scaling type named by a ``rope_scaling`` / ``rope_parameters`` dict ("default" when None)."""
    if not rope_scaling:
        return "default"
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope scaling type {rope_type!r} is not supported; minift implements {list(SUPPORTED_ROPE_TYPES)}. "
            "Use a checkpoint with one of those or remove 'rope_scaling' from config.json if it is not needed."
        )
    return rope_type


def _base_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """``1 / theta ** (2i / dim)`` for i < dim/2, fp32 on the CPU. Returns (dim/2,)."""
    exponent = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (theta**exponent)


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any], max_positions: int) -> torch.Tensor:
    """Llama 3.1 frequency-dependent scaling of ``inv_freq`` (dim/2,)."""
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context_len = scaling.get("original_max_position_embeddings") or max_positions
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_inv_freq(
    head_dim: int,
    theta: float,
    rope_scaling: dict[str, Any] | None = None,
    max_position_embeddings: int = 2048,
    seq_len: int | None = None,
) -> torch.Tensor:
    """Inverse frequencies for RoPE.

    Args:
        head_dim: per-head channels (rotated dimension; must be even).
        theta: base wavelength (``rope_theta``).
        rope_scaling: the config's scaling dict or None.
        max_position_embeddings: the config's maximum position (used by "dynamic" and as the default
            ``original_max_position_embeddings`` of "llama3").
        seq_len: current sequence length, only used by "dynamic".

    Returns:
        (head_dim/2,) fp32 CPU tensor.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}; check head_dim / hidden_size in config.json")
    rope_type = rope_type_of(rope_scaling)
    if rope_type == "dynamic":
        factor = float(rope_scaling["factor"])
        seq_len = max(seq_len or 0, max_position_embeddings)
        theta = theta * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = _base_inv_freq(head_dim, theta)
    if rope_type == "linear":
        inv_freq = inv_freq / float(rope_scaling["factor"])
    elif rope_type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rope_scaling, max_position_embeddings)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Produces the cos/sin tables for given positions.

    Args:
        head_dim: rotated channels per head.
        theta: ``rope_theta``.
        rope_scaling: scaling dict (see module docstring) or None.
        max_position_embeddings: the config's maximum position.
    """

    def __init__(
        self,
        head_dim: int,
        theta: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
        max_position_embeddings: int = 2048,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = float(theta)
        self.rope_scaling = dict(rope_scaling) if rope_scaling else None
        self.rope_type = rope_type_of(self.rope_scaling)
        self.max_position_embeddings = max_position_embeddings
        self.inv_freq = rope_inv_freq(head_dim, self.theta, self.rope_scaling, max_position_embeddings)

    def _inv_freq_for(self, position_ids: torch.Tensor) -> torch.Tensor:
        device = position_ids.device
        if self.rope_type == "dynamic" and position_ids.numel():
            seq_len = int(position_ids.max().item()) + 1  # a host sync, only for dynamic scaling
            if seq_len > self.max_position_embeddings:
                return rope_inv_freq(
                    self.head_dim, self.theta, self.rope_scaling, self.max_position_embeddings, seq_len=seq_len
                ).to(device)
        if self.inv_freq.device != device:
            self.inv_freq = self.inv_freq.to(device)  # cache on the compute device
        return self.inv_freq

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for ``position_ids``.

        Args:
            position_ids: (B, T) or (T,) integer positions.
            dtype: dtype of the returned tables (the activations' dtype).

        Returns:
            cos, sin: each (B, T, head_dim) (or (T, head_dim)), computed in fp32 then cast to ``dtype``.
        """
        inv_freq = self._inv_freq_for(position_ids)
        with torch.autocast(device_type=position_ids.device.type, enabled=False):
            freqs = position_ids[..., None].float() * inv_freq  # (B, T, hs/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hs)
            return emb.cos().to(dtype), emb.sin().to(dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, rope_type={self.rope_type}"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(..., hs) -> (..., hs): ``[-x2, x1]`` where x1, x2 are the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys.

    Args:
        q: (B, nh, T, hs); k: (B, n_kv, T, hs).
        cos, sin: (B, T, hs) or (T, hs) from :class:`RotaryEmbedding`.

    Returns:
        q, k rotated, same shapes.
    """
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
