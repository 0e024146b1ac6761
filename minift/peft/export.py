"""Hand minift PEFT to the Hugging Face world: peft's adapter format, or a merged transformers folder.

``export_peft(model, folder)`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` exactly as peft's
``PeftModel.save_pretrained`` does for a LoRA (peft 0.21 layout): keys
``base_model.model.<hf key>.lora_A.weight`` (r, C_in) / ``.lora_B.weight`` (C_out, r), and the head (and any other
module the base checkpoint lacks) under ``base_model.model.<key>.<param>`` (peft's ``modules_to_save`` with the
adapter name stripped). Our module
names are the HF keys, so the mapping is a prefix and a suffix. GPT-2: our ``c_attn`` is an ``nn.Linear`` but
transformers' is a ``Conv1D``; peft's LoRA matrices have the same shapes for both, only ``fan_in_fan_out`` must be
true so that peft merges the transposed way. Decoder soft prompts are written as peft's ``PROMPT_TUNING``
(``prompt_embeddings`` (n, C)); both prepend the prompt.

``save_merged(model, folder)`` merges the LoRA update into the base weights and writes an HF folder with
``minift.models.save_pretrained`` (no LoRA keys: the LoRA layers are swapped for plain ``nn.Linear`` while
writing and swapped back afterwards, leaving the model as it was). A 4-bit base (QLoRA) is written dequantised,
with the update added in fp32 (``LoRANF4Linear.merged_linear``), in the layers' parameter dtype.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from minift.peft.adapter import AdapterPath
from minift.peft.apply import find_peft_spec, peft_modules
from minift.peft.lora import LoRALinear, LoRANF4Linear, LoRAPath
from minift.quant.linear import NF4Linear

PEFT_TASK_TYPES = {
    "classification": "SEQ_CLS",
    "regression": "SEQ_CLS",
    "token-classification": "TOKEN_CLS",
    "causal-lm": "CAUSAL_LM",
    None: "FEATURE_EXTRACTION",
}


def export_peft(model: nn.Module, folder: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write a LoRA (any family) or soft-prompt (decoders) model as a peft adapter folder that
    ``PeftModel.from_pretrained`` loads onto the matching ``transformers`` model.

    Args:
        model: a model returned by ``apply(model, "lora", ...)`` (merged or not: the LoRA matrices are exported)
            or by ``apply(decoder, "prompt", ...)``.
        folder: output folder (created if needed).
        base_model_name_or_path: recorded in ``adapter_config.json`` (peft uses it only for convenience loading).

    The head (classification, regression, token classification) is always exported as a peft
    ``modules_to_save`` entry, trained or not, because the base checkpoint usually lacks it; so is every other
    module the loader initialised because the base checkpoint lacks it (``model.fresh_keys``, e.g. a pooler).
    Encoder soft prompts are refused: minift inserts them after [CLS], peft prepends them, so peft would not
    reproduce the model.
    """
    spec = find_peft_spec(model)
    method = spec.name if spec else "none"
    if method not in ("lora", "prompt"):
        raise ValueError(f"export_peft writes LoRA adapters and decoder soft prompts; this model's PEFT method "
                         f"is {method!r}. Use save_trainable for minift's own format")
    tensors, config = _lora_export(model, spec.options) if method == "lora" else _prompt_export(model)
    config = {"base_model_name_or_path": base_model_name_or_path, "task_type": PEFT_TASK_TYPES[model.head_kind],
              "inference_mode": True, **config}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def _lora_export(model: nn.Module, options: dict) -> tuple[dict, dict]:
    """peft LoRA tensors (``base_model.model.<key>.lora_A.weight``...) and config fields."""
    # A bare encoder matches transformers' BertModel / RobertaModel, whose keys have no family prefix
    # (as minift.models.save_pretrained writes it).
    strip = model.head_kind is None and not model.is_decoder
    prefix = model.family.prefix + "."
    tensors, targets = {}, []
    for name, module in model.named_modules():
        if isinstance(module, LoRAPath):  # on an fp or a 4-bit base: the same matrices
            key = name.removeprefix(prefix) if strip else name
            targets.append(key)
            tensors[f"base_model.model.{key}.lora_A.weight"] = module.lora_A
            tensors[f"base_model.model.{key}.lora_B.weight"] = module.lora_B
    saved = {(key.removeprefix(prefix) if strip else key): m for key, m in _modules_to_save(model).items()}
    for key, module in saved.items():
        for pname, p in module.named_parameters():
            tensors[f"base_model.model.{key}.{pname}"] = p
    bias = options.get("bias", "none")
    tensors.update(_bias_tensors(model, bias, list(saved), prefix if strip else ""))
    config = {
        "peft_type": "LORA",
        "r": options["r"],
        "lora_alpha": options["alpha"],
        "lora_dropout": options["dropout"],
        # full module names: peft matches a list entry by equality or dotted suffix, so a short name such as
        # "dense" could also catch a head module that minift left alone
        "target_modules": targets,
        "modules_to_save": list(saved) or None,
        # HF keeps these weights as Conv1D (in, out) (GPT-2's c_attn): peft must merge them transposed
        "fan_in_fan_out": any(re.search(model.family.conv1d, t + ".weight") for t in targets)
        if model.family.conv1d else False,
        "bias": bias,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
    }
    return tensors, config


def _bias_tensors(model: nn.Module, bias: str, saved: list, strip: str) -> dict:
    """The biases peft saves for its ``bias`` option, in its layout: every bias of the model ("all") or those of
    the LoRA layers ("lora_only"); a LoRA layer's under ``<key>.base_layer.bias`` (peft nests the base layer), the
    others under ``<key>.bias``. Those of ``saved`` (modules_to_save) are already written whole."""
    if bias == "none":
        return {}
    wrapped = set(peft_modules(model))
    out = {}
    for name, module in model.named_modules():
        p = module._parameters.get("bias")
        if p is None or (bias == "lora_only" and name not in wrapped):
            continue
        key = name.removeprefix(strip)
        if any(key == k or key.startswith(k + ".") for k in saved):
            continue
        out[f"base_model.model.{key}.{'base_layer.' if name in wrapped else ''}bias"] = p
    return out


def _prompt_export(wrapper: nn.Module) -> tuple[dict, dict]:
    """peft prompt-tuning tensors (``prompt_embeddings``; a head under ``base_model.<key>``) and config fields."""
    model = wrapper.model
    if not model.is_decoder:
        raise ValueError("export_peft writes soft prompts of decoders only: for encoders minift inserts the prompt "
                         "after [CLS] (so the [CLS]-pooled head reads [CLS]) while peft prepends it, so peft would "
                         "not reproduce this model. Use save_trainable")
    tensors = {"prompt_embeddings": wrapper.prompt.embedding}
    saved = _modules_to_save(model)
    for key, module in saved.items():
        for pname, p in module.named_parameters():
            tensors[f"base_model.{key}.{pname}"] = p  # peft's layout for prompt learning's modules_to_save
    n, C = wrapper.prompt.embedding.shape
    config = {
        "peft_type": "PROMPT_TUNING",
        "num_virtual_tokens": n,
        "token_dim": C,
        "num_transformer_submodules": 1,
        "num_attention_heads": model.config.num_heads,
        "num_layers": model.config.num_layers,
        "prompt_tuning_init": "RANDOM",  # the saved embeddings replace the initialisation
        "modules_to_save": list(saved) or None,
    }
    return tensors, config


def _head(model: nn.Module) -> tuple[str | None, nn.Module | None]:
    """The head's HF key and module when it is a task head peft saves as ``modules_to_save``."""
    if model.head_kind in (None, "causal-lm"):
        return None, None
    key = next(name for name, m in model.named_children() if m is model.head)
    return key, model.head


def _modules_to_save(model: nn.Module) -> dict[str, nn.Module]:
    """What peft must carry as ``modules_to_save``, by module name in ``model``: the task head, trained or not,
    and every module owning a parameter the loader initialised (``model.fresh_keys``: absent from the base
    checkpoint, so transformers would draw it anew too, e.g. a pooler or an untied ``lm_head``)."""
    head_key, head = _head(model)
    modules = {head_key: head} if head is not None else {}
    for key in getattr(model, "fresh_keys", ()):
        owner = key.rpartition(".")[0]
        if any(owner == name or owner.startswith(name + ".") for name in modules):
            continue
        modules[owner] = model.get_submodule(owner)
    lora = [name for name, module in modules.items() if isinstance(module, LoRAPath)]
    if lora:
        raise ValueError(f"{lora} carry LoRA but their weights are not in the base checkpoint, so peft would need "
                         "them both as LoRA targets and in modules_to_save; use save_trainable, or load a checkpoint "
                         "that has them")
    return modules


@contextmanager
def plain_linears(model: nn.Module):
    """Temporarily replace every ``LoRALinear`` by a plain ``nn.Linear`` sharing its weight (merge first to keep
    the update), and every 4-bit layer by an ``nn.Linear`` holding its dequantised weight (LoRA's update added in
    fp32: those layers hold their fp weights only while inside); the layers are put back on exit, even after an
    error."""
    swapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            plain = module.to_linear()
        elif isinstance(module, LoRANF4Linear):
            plain = module.merged_linear()
        elif isinstance(module, NF4Linear):
            plain = module.to_linear()
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, plain)
        swapped.append((parent, child, module))
    try:
        yield model
    finally:
        for parent, child, module in swapped:
            setattr(parent, child, module)


def save_merged(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model`` with its LoRA merged as an HF folder (``config.json`` + ``model.safetensors``) that
    ``transformers`` loads. The model is left as it was (merged or not). BitFit models are written as they are.
    A 4-bit base is dequantised and merged in fp32, then written in its layers' parameter dtype.

    Raises ``ValueError`` for adapters and soft prompts, which have no merged form in the base architecture.
    """
    from minift.models import save_pretrained  # the models package writes the HF layout (key tables, transposes)

    spec = find_peft_spec(model)
    if spec is not None and spec.name == "prompt":
        raise ValueError("a soft prompt cannot be merged into the base weights; save it with save_trainable "
                         "(or export the base model and prompt separately)")
    if any(isinstance(m, AdapterPath) for m in model.modules()):
        raise ValueError("bottleneck adapters add layers the base architecture lacks, so they cannot be merged; "
                         "save them with save_trainable")
    # Unmerged layers get their exact weights back afterwards (an unmerge would round in the last bit).
    originals = {m: m.weight.detach().clone() for m in model.modules() if isinstance(m, LoRALinear) and not m.merged}
    folder = Path(folder)
    try:
        for m in originals:
            m.merge()
        with torch.no_grad(), plain_linears(model):
            save_pretrained(model, folder)
    finally:
        with torch.no_grad():
            for m, weight in originals.items():
                m.weight.copy_(weight)
                m.merged = False
    return folder
