"""MLP activations by their Hugging Face names (``hidden_act`` / ``activation_function``)."""
from __future__ import annotations

import functools

import torch.nn.functional as F

from minift.models.errors import ConfigError

_ACTIVATIONS = {
    "gelu": F.gelu,  # exact (erf) GELU: BERT, RoBERTa
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),  # tanh approximation: GPT-2, GPT-Neo
    "gelu_pytorch_tanh": functools.partial(F.gelu, approximate="tanh"),
    "gelu_fast": functools.partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,  # Llama's SwiGLU gate
    "swish": F.silu,
    "tanh": F.tanh,
}


def activation(name: str):
    """The function for an HF activation name, e.g. ``activation("gelu_new")(x)``."""
    if name not in _ACTIVATIONS:
        raise ConfigError(f"unsupported activation {name!r} in config; supported: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]
