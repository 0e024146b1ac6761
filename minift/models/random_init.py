"""``from_config``: a model of any supported family with seeded random weights, from a config alone.

For counting parameters, smoke runs and profiling a shape whose weights are not at hand: a ``config.json`` file,
an HF folder that may hold only a config, a preset name (``minift.models.presets.PRESETS``) or a ``ModelConfig``.
Weights are drawn as transformers' ``_init_weights`` draws a fresh model: linear and embedding weights
N(0, initializer_range²) (an embedding's padding row zero), biases zero, norm gains one; a tied head shares the
input embedding. The model is built on the meta device with ``torch.nn.init``'s draws skipped (on meta they go
through ``torch._refs``, which imports ``torch._dynamo``: seconds for nothing), then each tensor is created once,
on the target device, by one ``torch.Generator`` seeded with ``seed`` in the state dict's order: the same call
gives the same weights, the caller's random state is left alone, and no default initialisation runs only to be
overwritten (that would double the cost of a RoBERTa-large: ~1.5 s per 100M parameters on a CPU core).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from minift.models.config import ModelConfig
from minift.models.errors import ModelLoadError
from minift.models.load import build_model, configure_labels, resolve_dtype
from minift.models.registry import HEAD_KINDS, get_family
from minift.models.task_model import TaskModel


def from_config(config: str | Path | dict | ModelConfig, head: str | None = None, num_labels: int | None = None,
                seed: int = 0, dtype: torch.dtype | str | None = None,
                device: str | torch.device | None = None) -> TaskModel:
    """A ``TaskModel`` of ``config`` with seeded random weights (transformers' initialisation).

    Args:
        config: a preset name (``roberta-base``, ``roberta-large``, ``bert-base-uncased``, ``scibert``, ...), a
            ``config.json`` file, an HF folder holding one (weights not needed), an HF config dict or a
            ``ModelConfig``.
        head: None | "classification" | "regression" | "token-classification" | "causal-lm"; None gives the bare
            encoder, or for decoders the family's default head.
        num_labels: outputs of a classification / token-classification head; None: the config's labels.
        seed: seeds the weights (the same seed gives the same model).
        dtype: parameter dtype (a ``torch.dtype`` or its name); None: float32.
        device: where the weights are created; None: cpu. ``"meta"``: shapes only, nothing drawn (for counting).

    Returns:
        The model in eval mode; ``fresh_keys`` lists every key (all were initialised), ``skipped_keys`` is empty.

    Raises:
        ModelLoadError: an unknown preset or path, an unreadable config, a bad head or ``num_labels``.
    """
    model_config = as_model_config(config)
    if head is not None and head not in HEAD_KINDS:
        raise ModelLoadError(f"unknown head {head!r}; use one of {', '.join(HEAD_KINDS)} or None")
    family = get_family(model_config.model_type)
    head = head if head is not None else family.default_head
    model_config = configure_labels(model_config, head, num_labels)
    dtype = resolve_dtype(dtype)
    device = torch.device(device if device is not None else "cpu")
    with torch.device("meta"), _SkipInit():
        model = build_model(model_config, family, head)
    generator = torch.Generator(device=device).manual_seed(int(seed)) if device.type != "meta" else None
    state = {}
    tied = model.head_spec.key + ".weight" if model.is_tied else None
    for key, tensor in model.state_dict().items():
        if key != tied:
            state[key] = _init_tensor(model, key, tensor, model_config.initializer_range, generator, dtype, device)
    if tied is not None:
        embedding = next(n for n, m in model.named_modules() if m is model.get_input_embeddings())
        state[tied] = state[embedding + ".weight"]
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    model.fresh_keys, model.skipped_keys = sorted(state), []
    return model.eval()


def as_model_config(config: str | Path | dict | ModelConfig) -> ModelConfig:
    """The ``ModelConfig`` of a preset name, a ``config.json`` / HF folder, an HF config dict or a ``ModelConfig``."""
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, dict):
        return ModelConfig.from_hf(dict(config))
    from minift.models.presets import resolve_model

    if Path(str(config)).expanduser().suffix == ".gguf":
        raise ModelLoadError(f"{config}: a .gguf file holds weights; load it with load_pretrained instead")
    try:
        return resolve_model(str(config))[0]
    except ValueError as err:
        raise ModelLoadError(str(err)) from None


class _SkipInit(TorchFunctionMode):
    """``torch.nn.init`` functions return their tensor untouched (every tensor is drawn afterwards)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@torch.no_grad()
def _init_tensor(model: nn.Module, key: str, like: torch.Tensor, std: float, generator: torch.Generator | None,
                 dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One tensor of ``model.state_dict()`` initialised as transformers initialises a fresh module."""
    owner_name, _, name = key.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    target = dtype if like.is_floating_point() else like.dtype
    if device.type == "meta":
        return torch.empty(like.shape, dtype=target, device=device)
    if name in owner._buffers:  # buffers (e.g. position ids) are recomputed by reset_buffers, or zero
        return torch.zeros(like.shape, dtype=target, device=device)
    t = torch.empty(like.shape, dtype=torch.float32, device=device)
    if name == "bias":
        t.zero_()
    elif isinstance(owner, (nn.Linear, nn.Embedding)):
        t.normal_(0.0, std, generator=generator)
        padding = getattr(owner, "padding_idx", None)
        if padding is not None:
            t[padding] = 0.0
    elif like.dim() == 1:  # a norm's gain (LayerNorm, RMSNorm): by structure, a 1-D weight of a non-linear module
        t.fill_(1.0)
    else:
        raise RuntimeError(f"no initialisation rule for {key} ({type(owner).__name__}, shape {tuple(like.shape)})")
    return t.to(target)
