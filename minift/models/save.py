"""``save_pretrained``: a ``TaskModel`` → a folder transformers (and ``load_pretrained``) loads.

Writes ``config.json`` (``ModelConfig.to_hf()`` with ``architectures`` set to the matching transformers class)
and ``model.safetensors`` with HF's keys: the family's save transforms applied (GPT-2's Conv1D transpose),
a tied ``lm_head.weight`` left out (transformers re-ties it), and a bare backbone saved without its prefix
as ``BertModel.save_pretrained`` does.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from minift.models.load import SAFETENSORS
from minift.models.task_model import TaskModel

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def save_pretrained(model: TaskModel, folder: str | Path) -> Path:
    """Save ``model`` as a Hugging Face checkpoint folder.

    Args:
        model: a ``TaskModel`` (e.g. from ``load_pretrained``), with or without a head.
        folder: created if needed; ``config.json`` and ``model.safetensors`` in it are overwritten.

    Returns:
        The folder.
    """
    if not isinstance(model, TaskModel):
        raise TypeError(f"save_pretrained expects a minift TaskModel, got {type(model).__name__}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; pass a folder to save the model into")
    folder.mkdir(parents=True, exist_ok=True)
    family, spec = model.family, model.head_spec
    state = model.state_dict()
    if model.is_tied:
        state.pop(spec.key + ".weight")
    strip = spec is None and not family.is_decoder  # bare encoders save unprefixed, as transformers does
    tensors = {}
    for key, tensor in state.items():
        tensor = family.transform(key, tensor.detach(), "save")
        name = key[len(family.prefix) + 1:] if strip and key.startswith(family.prefix + ".") else key
        # clone: safetensors refuses tensors that share storage or are non-contiguous views
        tensors[name] = tensor.to("cpu").contiguous().clone()
    config = model.config.to_hf()
    config["architectures"] = [spec.hf_class if spec is not None else family.hf_class]
    config["tie_word_embeddings"] = bool(model.config.tie_word_embeddings)
    if model.head_kind == "regression":
        config["problem_type"] = "regression"
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    config["dtype" if "torch_dtype" not in config else "torch_dtype"] = _DTYPE_NAMES.get(dtype, "float32")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_file(tensors, str(folder / SAFETENSORS), metadata={"format": "pt"})
    return folder
