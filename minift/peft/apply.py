"""``apply(model, method, **options)``: put a PEFT method on a loaded ``TaskModel`` and choose what trains.

Modules are swapped in place (walk ``named_modules``, match, ``setattr(parent, name, new)``, as HF PEFT's
``_replace_module``); the model code knows nothing about PEFT. What trains is chosen by structure: the
``adapter_params()`` of every PEFT module, the head (unless ``train_head=False``), for BitFit every ``bias``
parameter, and for a LoRA / adapter with ``bias`` (peft's option) every ``bias`` parameter ("all") or those of
the wrapped layers ("lora_only" / "adapter_only"). Names are never matched by substring to decide what trains.
"""
from __future__ import annotations

from torch import nn

from minift.peft.adapter import AdapterLinear, AdapterNF4Linear
from minift.peft.bitfit import bias_params
from minift.peft.config import ADAPTER_PLACEMENTS, TRAINABLE_HEADS, AdapterConfig, LoRAConfig, Method, method_config
from minift.peft.lora import LoRALinear, LoRANF4Linear, LoRAPath
from minift.peft.prompt import PromptModel, SoftPrompt
from minift.quant.linear import NF4Linear


def apply(model: nn.Module, method: str | Method, *, train_head: bool | None = None, **options) -> nn.Module:
    """Apply a PEFT method to ``model`` in place and set ``requires_grad`` on exactly what trains.

    Args:
        model: a ``TaskModel`` (see docs/ARCHITECTURE.md) without PEFT applied.
        method: a ``minift.peft.config.Method``, or a method name with its options as keywords: "lora"
            (``LoRAConfig``: r, alpha, dropout, targets, bias), "adapter" (``AdapterConfig``: size or
            reduction_factor, placement, activation, bias), "bitfit" (no options) or "prompt" (``PromptConfig``:
            length, init, text, token_ids — tokenise an init text yourself and pass its token_ids).
        train_head: whether the head's weights train. Default: True for classification, regression and token
            classification heads; False for a causal-LM head or no head. Under BitFit the head's biases train
            either way.

    Returns:
        ``model`` itself (LoRA, adapter, BitFit) or a ``PromptModel`` wrapping it (prompt). Either has a
        ``peft_spec`` attribute: the ``Method`` applied, with ``train_head`` resolved.
    """
    spec = _as_method(method, train_head, options)
    if find_peft_spec(model) is not None or peft_modules(model):
        raise ValueError("this model already has PEFT applied; apply one method to a fresh model "
                         "(minift.models.load_pretrained)")
    cfg = spec.config
    train_head = _resolve_train_head(model, spec.train_head)
    if spec.name == "bitfit" and not bias_params(model.backbone):
        raise ValueError(f"BitFit trains bias terms, but this {model.family.model_type} backbone has none (e.g. "
                         "Llama without attention_bias/mlp_bias); use method 'lora' or 'adapter' instead")
    if spec.name == "lora":
        _apply_lora(model, cfg)
    elif spec.name == "adapter":
        _apply_adapters(model, cfg)
    elif spec.name == "prompt":
        if cfg.init == "text" and cfg.token_ids is None:
            raise ValueError("prompt init 'text' needs token_ids: tokenise the text with the model's tokenizer "
                             "(minift.train does it for --prompt-text)")
        model = PromptModel(model, SoftPrompt(cfg.length, model.get_input_embeddings(), cfg.init, cfg.token_ids))
    _choose_trainable(model, spec.name, train_head, getattr(cfg, "bias", "none"))
    model.peft_spec = Method(spec.name, cfg, train_head)
    return model


def _as_method(method: str | Method, train_head: bool | None, options: dict) -> Method:
    if isinstance(method, Method):
        if options or train_head is not None:
            raise TypeError("apply(model, Method(...)) takes no further options: put them in the Method")
        spec = method
    else:
        spec = Method(method, method_config(method, options), train_head)
    if spec.name == "full":
        raise ValueError("'full' is not a PEFT method: full fine-tuning trains every parameter as loaded")
    return spec


def _choose_trainable(model: nn.Module, method: str, train_head: bool, bias: str = "none") -> None:
    """``requires_grad`` by structure: the PEFT modules' ``adapter_params()``, the head when it trains, every bias
    under BitFit or ``bias="all"``, the wrapped layers' own biases under ``bias="lora_only"`` / ``"adapter_only"``
    (peft's ``bias``: the base layer's bias of each module it replaced); everything else is frozen."""
    base = model.model if isinstance(model, PromptModel) else model
    for p in model.parameters():
        p.requires_grad_(False)
    for module in peft_modules(model).values():
        for p in module.adapter_params().values():
            p.requires_grad_(True)
    if train_head and base.head is not None:
        for p in base.head.parameters():
            p.requires_grad_(True)
    if method == "bitfit" or bias == "all":
        head_biases = bias_params(base.head) if base.head is not None else {}
        for p in [*bias_params(base.backbone).values(), *head_biases.values()]:
            p.requires_grad_(True)
    elif bias.endswith("_only"):  # lora_only / adapter_only
        for module in peft_modules(model).values():
            if isinstance(getattr(module, "bias", None), nn.Parameter):
                module.bias.requires_grad_(True)


def _resolve_train_head(model: nn.Module, train_head: bool | None) -> bool:
    kind = model.head_kind
    if train_head is None:
        return kind in TRAINABLE_HEADS
    if not isinstance(train_head, bool):
        raise TypeError(f"train_head must be True, False or None (default), got {train_head!r}")
    if train_head and kind not in TRAINABLE_HEADS:
        if kind is None:
            raise ValueError("train_head=True but the model has no head; load it with a head or drop train_head")
        if getattr(model, "is_tied", False):
            raise ValueError("train_head=True on a causal-LM head tied to the input embeddings would train the "
                             "whole vocabulary matrix; leave train_head unset (False) for causal-LM models")
    return train_head


def _replace(parent_root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = parent_root.get_submodule(parent_name) if parent_name else parent_root
    setattr(parent, child, new)


def _apply_lora(model: nn.Module, cfg: LoRAConfig) -> None:
    family = model.family.model_type
    targets = cfg.targets or list(model.family.lora_targets)
    if not targets:
        raise ValueError(f"no default LoRA targets for model type {family!r}; pass targets=[module names]")
    backbone = model.backbone
    linears = {name: m for name, m in backbone.named_modules() if isinstance(m, (nn.Linear, NF4Linear))}
    chosen = {}
    for target in targets:
        hits = [name for name, m in backbone.named_modules() if name == target or name.endswith("." + target)]
        if not hits:
            known = sorted({name.rpartition(".")[2] for name in linears})
            raise ValueError(f"LoRA target {target!r} matches no module of the {family} backbone; "
                             f"its nn.Linear names are {known}")
        wrong = [name for name in hits if name not in linears]
        if wrong:
            raise ValueError(f"LoRA target {target!r} matches modules that are not nn.Linear: {wrong[:3]}; "
                             "LoRA applies to linear layers only")
        chosen.update({name: linears[name] for name in hits})
    for name, linear in chosen.items():  # a 4-bit base (minift.quant) gets the same side path
        lora = LoRANF4Linear.from_nf4 if isinstance(linear, NF4Linear) else LoRALinear.from_linear
        _replace(backbone, name, lora(linear, cfg.r, cfg.alpha, cfg.dropout))


def _apply_adapters(model: nn.Module, cfg: AdapterConfig) -> None:
    sites = model.family.adapter_sites
    missing = [site for site in ADAPTER_PLACEMENTS[cfg.placement] if site not in sites]
    if missing:
        raise ValueError(f"model type {model.family.model_type!r} names no adapter site for {missing}; "
                         f"its sites are {sorted(sites)}")
    size = cfg.bottleneck_size(model.config.hidden_size)
    for block in model.blocks:
        for site in ADAPTER_PLACEMENTS[cfg.placement]:
            name = sites[site]
            linear = block.get_submodule(name)
            adapter = AdapterNF4Linear.from_nf4 if isinstance(linear, NF4Linear) else AdapterLinear.from_linear
            _replace(block, name, adapter(linear, size, cfg.activation))


def peft_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of ``model`` that owns PEFT parameters (has ``adapter_params()``), by qualified name."""
    return {name: m for name, m in model.named_modules() if callable(getattr(type(m), "adapter_params", None))}


def find_peft_spec(model: nn.Module) -> Method | None:
    """The ``Method`` recorded by ``apply`` on ``model``, or None."""
    spec = model.__dict__.get("peft_spec")
    return spec if isinstance(spec, Method) else None


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of every parameter with ``requires_grad`` (tied parameters once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def trainable_summary(model: nn.Module) -> str:
    """``trainable params: N || all params: M || trainable%: P``, formatted as peft's
    ``print_trainable_parameters`` (thousands separators, P with 4 decimals). Tied parameters count once."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"


def merge(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer into its base weight (idempotent). Raises if the model has no LoRA layer, and for
    LoRA on a 4-bit base (``NotImplementedError``: ``save_merged`` exports it merged in fp32 instead)."""
    layers = _lora_layers(model)
    for layer in layers:
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo ``merge`` on every LoRA layer (idempotent)."""
    for layer in _lora_layers(model):
        layer.unmerge()
    return model


def _lora_layers(model: nn.Module) -> list[LoRAPath]:
    layers = [m for m in model.modules() if isinstance(m, LoRAPath)]
    if not layers:
        raise ValueError("the model has no LoRA layers to merge; apply(model, 'lora', ...) first")
    return layers
