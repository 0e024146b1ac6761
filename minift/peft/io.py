"""Save exactly the trainable tensors of a PEFT model, and load them onto a fresh base model.

A folder holds ``peft_config.json`` (the method, its options, ``train_head``, the model type, and under
``"saved"`` the names of the tensors in the file) and ``peft_trainable.safetensors``, which holds, under their
names in the model (for LoRA ``bert.encoder.layer.0.attention.self.query.lora_A``, for a soft prompt
``prompt.embedding``, the head's HF keys):

- ``"trainable"``: every parameter with ``requires_grad``;
- ``"frozen"``: the frozen parameters that a fresh base model would not reproduce, so that reloading gives the
  same model whatever the torch seed: every parameter of a task head (classification, regression, token
  classification; a few kB, saved even when the checkpoint has a head) and every parameter the loader initialised
  because the base checkpoint lacks it (``model.fresh_keys`` from ``load_pretrained``, e.g. a pooler). Without
  them a head frozen by ``train_head=False`` on a headless checkpoint would be drawn anew at every load.

Nothing is pickled. Loading re-applies the method to the fresh base model and copies the tensors in, which
reproduces the trained model's outputs exactly. Files of version 1 (trainable tensors only) still load.

Below the folder format, ``trainable_state(model)`` / ``load_trainable_state(model, tensors, source)`` are the
tensors-level pair (every parameter with ``requires_grad``, checked by name and shape) that ``minift.train``'s
checkpoints use, for full fine-tuning too.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from minift.peft.apply import apply, find_peft_spec, trainable_parameters
from minift.peft.config import PEFT_METHODS, TRAINABLE_HEADS, Method, method_config
from minift.peft.lora import LoRALinear
from minift.peft.prompt import PromptModel

CONFIG_NAME = "peft_config.json"
WEIGHTS_NAME = "peft_trainable.safetensors"
FORMAT = "minift-peft"
VERSION = 2  # 2: frozen head / fresh tensors saved too (version 1 saved the trainable tensors only)


def save_trainable(model: nn.Module, folder: str | Path) -> Path:
    """Write the trainable tensors, the frozen tensors a fresh base model lacks (the task head, the loader's
    ``fresh_keys``; see the module docstring) and the method's config to ``folder`` (created if needed).

    Returns the folder. Raises ``ValueError`` when no PEFT method was applied (use
    ``minift.models.save_pretrained`` to save a fully fine-tuned model).
    """
    spec = find_peft_spec(model)
    if spec is None:
        raise ValueError("save_trainable needs a model returned by minift.peft.apply(...); for full fine-tuning "
                         "save the whole model with minift.models.save_pretrained")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trainable = trainable_parameters(model)
    frozen = frozen_to_save(model, fresh_keys=getattr(model, "fresh_keys", ()))
    # clone: safetensors refuses tensors sharing storage, and the file must not alias live parameters.
    tensors = {name: p.detach().to("cpu").contiguous().clone() for name, p in trainable.items()}
    tensors.update({name: _unmerged(model, name, p).to("cpu").contiguous().clone() for name, p in frozen.items()})
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": FORMAT})
    config = {"format": FORMAT, "version": VERSION, "model_type": model.config.model_type, **spec.to_dict(),
              "saved": {"trainable": sorted(trainable), "frozen": sorted(frozen)}}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def read_spec(folder: str | Path) -> tuple[Method, dict]:
    """The ``Method`` and raw config saved in ``folder`` by ``save_trainable`` (validated)."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass a folder written by minift.peft.save_trainable")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-save the adapter with save_trainable") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a minift PEFT config (no \"format\": \"{FORMAT}\"); a peft "
                         "adapter_config.json is loaded with peft's PeftModel.from_pretrained instead")
    method = config.get("method")
    if method not in PEFT_METHODS:
        raise ValueError(f"{path}: unknown method {method!r}; expected one of {sorted(PEFT_METHODS)}")
    options = config.get("options") or {}
    if not isinstance(options, dict):
        raise TypeError(f"{path}: \"options\" must be an object, got {type(options).__name__}")
    return Method(method, method_config(method, options), bool(config.get("train_head", True))), config


def load_trainable(model: nn.Module, folder: str | Path) -> nn.Module:
    """Apply the saved method to ``model`` (a fresh base model) and load the saved trainable tensors.

    ``model`` may also already carry the same method (same options), e.g. to reload into a model being trained.
    Returns the model (a ``PromptModel`` wrapper for the prompt method). Raises ``ValueError`` naming the keys
    when the saved tensors do not match the model's trainable parameters (missing, unexpected, wrong shape).
    """
    spec, config = read_spec(folder)
    folder = Path(folder)
    if config.get("model_type") != model.config.model_type:
        raise ValueError(f"{folder} holds a PEFT state for a {config.get('model_type')!r} model, but the model is "
                         f"{model.config.model_type!r}; load it onto the base model it was trained from")
    current = find_peft_spec(model)
    if current is None:
        model = apply(model, spec)
    elif current.to_dict() != spec.to_dict():
        raise ValueError(f"the model already has PEFT {current.to_dict()} but {folder} holds "
                         f"{spec.to_dict()}; load onto a fresh base model instead")
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found next to {CONFIG_NAME}; the folder is incomplete, re-save it")
    saved = load_file(str(path))
    params = trainable_parameters(model)
    if config.get("version", 1) >= 2:
        # The head is always expected; the other frozen tensors are the fresh keys of the model that was saved
        # (this base model may have them from its checkpoint): one the model lacks is reported as unexpected.
        recorded = (config.get("saved") or {}).get("frozen") or []
        params.update(frozen_to_save(model))
        everything = dict(model.named_parameters())
        params.update({name: everything[name] for name in recorded if name in everything})
    # A merged LoRA layer holds its old update in the weight: take it out before replacing A and B. LoRA on a
    # 4-bit base (LoRANF4Linear, not a LoRALinear) never merges: nothing to undo there.
    merged = [m for m in model.modules() if isinstance(m, LoRALinear) and m.merged]
    for m in merged:
        m.unmerge()
    try:
        _copy_checked(params, saved, str(path))
    finally:
        for m in merged:
            m.merge()
    return model


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name → detached tensor of every parameter with ``requires_grad`` (tied parameters once), as they are in the
    model (not copied): what a training checkpoint saves, for PEFT and full fine-tuning alike."""
    return {name: p.detach() for name, p in trainable_parameters(model).items()}


def load_trainable_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` (from :func:`trainable_state`) into ``model``'s trainable parameters, in place.

    Raises ``ValueError`` naming the keys (and ``source``) unless the names are exactly the trainable parameters'
    and every shape matches.
    """
    _copy_checked(trainable_parameters(model), tensors, source)


def _copy_checked(params: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor], source: str) -> None:
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    wrong = sorted(k for k in set(params) & set(tensors) if tuple(params[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"{source} does not match the model's trainable parameters: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}; was it saved from a different "
                         "base model or method?")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(device=p.device, dtype=p.dtype))


def frozen_to_save(model: nn.Module, fresh_keys=()) -> dict[str, nn.Parameter]:
    """The frozen parameters ``save_trainable`` writes besides the trainable ones, by name in ``model``: every
    parameter of a task head, and the parameters named in ``fresh_keys`` (keys of the ``TaskModel``, as
    ``load_pretrained`` records them in ``model.fresh_keys``)."""
    base = model.model if isinstance(model, PromptModel) else model
    prefix = "model." if base is not model else ""
    fresh = set(fresh_keys)
    wanted = set()
    if base.head is not None and base.head_kind in TRAINABLE_HEADS:
        wanted |= {id(p) for p in base.head.parameters()}
    named = {prefix + name: p for name, p in base.named_parameters()}
    return {name: p for name, p in named.items()
            if not p.requires_grad and (id(p) in wanted or name.removeprefix(prefix) in fresh)}


def _unmerged(model: nn.Module, name: str, p: nn.Parameter) -> torch.Tensor:
    """``p`` as saved: the weight of a merged LoRA layer without its update (loading merges it back)."""
    owner_name, _, pname = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if isinstance(owner, LoRALinear) and owner.merged and pname == "weight":
        return (p.detach().float() - owner.delta_weight()).to(p.dtype)
    return p.detach()


def saved_names(model: nn.Module) -> list:
    """The parameters a run writes as its weights: every parameter of a model without a PEFT method (full
    fine-tuning), else the trainable ones and the frozen ones a fresh base lacks (:func:`frozen_to_save`). The run's
    best/ writer and the memory estimator both ask this (and ``frozen_in_compute_dtype`` leaves these as they are)."""
    if find_peft_spec(model) is None:
        return [name for name, _ in model.named_parameters()]
    return [*trainable_parameters(model), *frozen_to_save(model, fresh_keys=getattr(model, "fresh_keys", ()))]
