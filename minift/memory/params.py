"""What the estimator reads off the real model: built on the meta device, with the method applied.

``model_facts(config, head, method)`` builds ``minift.models.load.build_model(config, family, head)`` under
``torch.device("meta")`` (shapes only: no memory, no weights), stores its block linears in NF4 with
``minift.quant.quantize_model`` when the run quantises its base (QLoRA), applies the method with
``minift.peft.apply`` as a run does, and walks the module tree (nanoGPT's ``get_num_params``): the parameter
counts (a tied embedding once), what trains, the largest trainable tensor, each block's and the head's trainable
elements, every linear with its shape, bias, the LoRA or adapter around it, which of its parameters train and
whether its weight is 4-bit, and the bytes of the NF4 codes and scales (``nbytes`` of the buffers). Which frozen
linear weights and biases ``minift.train`` stores in the autocast dtype under ``--precision bf16 / fp16`` is read
the same way: ``minift.precision.frozen_in_compute_dtype`` runs on a copy of the meta model, skipping what the run
saves (``minift.peft.io.saved_names``), as the recipe calls it (a checkpoint is taken to have every key:
``fresh_keys`` empty). Nothing
here restates a family, a head or a PEFT module: what ``minift.models`` and ``minift.peft`` build is what is
counted. The model and its facts are cached per (config, head, method, quantization): ``largest_batch`` asks many
times.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from minift.models.config import ModelConfig
from minift.models.load import build_model
from minift.models.registry import get_family
from minift.peft.adapter import AdapterPath
from minift.peft.apply import apply, peft_modules
from minift.peft.bitfit import bias_params
from minift.peft.config import Method, PromptConfig
from minift.peft.io import saved_names
from minift.peft.lora import LoRAPath
from minift.peft.prompt import PromptModel
from minift.precision import frozen_in_compute_dtype
from minift.quant import NF4Config, NF4Linear, quantize_model


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts (elements)."""

    total: int  # every parameter, tied ones once, PEFT parameters and 4-bit weights included
    trainable: int  # what the optimizer updates
    base: int  # the model without PEFT parameters
    quantized: int = 0  # weights stored in NF4 (buffers of minift.quant.NF4Linear layers, part of total)


@dataclass(frozen=True)
class Linear:
    """One linear layer of the model as built (``nn.Linear``, or ``NF4Linear`` with a 4-bit weight), with the PEFT
    module swapped in around it (if any)."""

    name: str  # qualified name in the TaskModel, e.g. "model.layers.0.self_attn.q_proj"
    in_f: int
    out_f: int
    bias: bool
    weight_trains: bool
    bias_trains: bool
    lora_r: int = 0  # rank of a LoRALinear (0: no LoRA)
    lora_dropout: float = 0.0  # dropout on the LoRA path's input
    adapter_size: int = 0  # bottleneck width of an AdapterLinear (0: no adapter)
    adapter_activation: str = "relu"
    quantized: bool = False  # the weight is stored in NF4 (frozen; dequantised for each matmul)
    weight_cast: bool = False  # frozen weight minift.train stores in the autocast dtype (autocast copies nothing)


@dataclass(frozen=True)
class ModelFacts:
    """Everything the estimator counts, read off the model built on the meta device."""

    params: ParamCount
    largest_trainable: int  # elements of the largest trainable tensor (a per-tensor optimizer step's unit)
    block_trainable: tuple[int, ...]  # trainable elements of each block (its gradients appear block by block)
    head_trainable: int  # trainable elements of the head module (a tied lm_head: the embedding, when it trains)
    linears: dict[str, Linear]  # every nn.Linear by qualified name (the PEFT modules' own linears excluded)
    blocks: tuple[str, ...]  # qualified name of each block, in order
    pooler: str | None  # qualified name of the backbone's pooler module, if it has one
    head: str | None  # qualified name of the head module
    embedding_trains: bool  # the embedding tables train (full fine-tuning)
    norm_trains: tuple[bool, bool]  # (weight, bias) of the norms train
    tied_head: bool  # the head's weight is the input embedding
    prompt_length: int  # soft-prompt tokens in front of every sequence (0: no prompt)
    has_biases: bool  # the backbone has bias parameters (what BitFit trains)
    quantized_bytes: int = 0  # bytes of the NF4 layers' codes and scales
    largest_quantized: int = 0  # elements of the largest NF4 weight (one is dequantised at a time)
    compute_dtype_elements: int = 0  # frozen linear weights + biases stored in the autocast dtype (bf16 / fp16)
    lengths: dict[int, str] = field(default_factory=dict, compare=False)  # sequence length → "" (runs) or why not


_CACHE: OrderedDict[tuple, tuple[nn.Module, ModelFacts]] = OrderedDict()
_CACHE_SIZE = 16


def model_facts(config: ModelConfig, head: str | None, method: Method,
                quantize: NF4Config | None = None) -> ModelFacts:
    """The facts of ``config`` with ``head`` under ``method``, its base quantised by ``quantize`` (cached).

    Raises:
        ValueError: the family has no such head, or ``minift.peft.apply`` refuses the method (LoRA targets that
            match nothing, BitFit without biases, ...), with its message; full fine-tuning of a quantised base.
    """
    return _cached(config, head, method, quantize)[1]


def meta_model(config: ModelConfig, head: str | None, method: Method,
               quantize: NF4Config | None = None) -> nn.Module:
    """The (cached) model of ``config`` with ``head`` and ``method`` applied, on the meta device."""
    return _cached(config, head, method, quantize)[0]


def _cached(config: ModelConfig, head: str | None, method: Method,
            quantize: NF4Config | None) -> tuple[nn.Module, ModelFacts]:
    key = (repr(config), head, repr(method), repr(quantize))
    if key not in _CACHE:
        model = build_meta_model(config, head, method, quantize)
        _CACHE[key] = (model, _facts(model, _cast_in_compute_dtype(model)))
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def build_meta_model(config: ModelConfig, head: str | None, method: Method,
                     quantize: NF4Config | None = None) -> nn.Module:
    """``build_model`` (+ ``minift.quant.quantize_model``) + ``minift.peft.apply`` on the meta device (see
    ``model_facts`` for the errors)."""
    family = get_family(config.model_type)
    if head is not None and head not in family.heads:
        raise ValueError(f"a {config.model_type} model has no {head} head; its heads are {', '.join(family.heads)}")
    if quantize is not None and method.name == "full":
        raise ValueError("full fine-tuning trains every weight, but a 4-bit (NF4) base is frozen: quantise the base "
                         "for a PEFT method (--method lora with --quantize nf4), or fine-tune the model unquantised")
    if head == "regression":
        config = config.with_labels(1)
    with torch.device("meta"):
        model = build_model(config, family, head)
        if quantize is not None:
            quantize_model(model, quantize)
        if method.name != "full":
            model = apply(model, _countable(method))
    return model


def _countable(method: Method) -> Method:
    """``method`` as a meta model can take it: a prompt initialised from a text the caller has not tokenised starts
    from random values instead (the initialisation does not change the memory)."""
    cfg = method.config
    if isinstance(cfg, PromptConfig) and cfg.init == "text" and cfg.token_ids is None:
        return replace(method, config=PromptConfig(length=cfg.length, init="random"))
    return method


def _cast_in_compute_dtype(model: nn.Module) -> tuple[set[str], int]:
    """What ``minift.train`` stores in the autocast dtype under ``--precision bf16`` (or fp16) on one process or
    under DDP: ``frozen_in_compute_dtype`` run on a copy of the meta model (shapes only) with the saved parameters
    skipped, as the recipe does. Returns the names (in the base model) of the linears whose weight it cast and the
    elements it cast (weights and biases, a tied tensor once)."""
    twin = copy.deepcopy(model)
    frozen_in_compute_dtype(twin, "bf16", skip=saved_names(twin))
    base = twin.model if isinstance(twin, PromptModel) else twin
    linears = {name for name, m in base.named_modules()
               if isinstance(m, nn.Linear) and m.weight.dtype == torch.bfloat16}
    return linears, sum(p.numel() for p in twin.parameters() if p.dtype == torch.bfloat16)


def _facts(model: nn.Module, cast: tuple[set[str], int] = (set(), 0)) -> ModelFacts:
    base = model.model if isinstance(model, PromptModel) else model
    names = {id(m): name for name, m in base.named_modules()}
    params = list(model.parameters())  # each tensor once: a tied lm_head is the embedding
    peft = [p for m in peft_modules(model).values() for p in m.adapter_params().values()]
    trainable = [p for p in params if p.requires_grad]
    nf4 = [m for m in model.modules() if isinstance(m, NF4Linear)]
    quantized = sum(m.in_features * m.out_features for m in nf4)
    total = sum(p.numel() for p in params) + quantized
    pooler = getattr(base.backbone, "pooler", None)
    head_params = list(base.head.parameters()) if base.head is not None else []
    return ModelFacts(
        params=ParamCount(total=total, trainable=sum(p.numel() for p in trainable),
                          base=total - sum(p.numel() for p in peft), quantized=quantized),
        largest_trainable=max((p.numel() for p in trainable), default=0),
        block_trainable=tuple(sum(p.numel() for p in b.parameters() if p.requires_grad) for b in base.blocks),
        head_trainable=sum(p.numel() for p in head_params if p.requires_grad),
        linears=_linears(base, cast[0]),
        blocks=tuple(names[id(b)] for b in base.blocks),
        pooler=names[id(pooler)] if pooler is not None else None,
        head=names[id(base.head)] if base.head is not None else None,
        embedding_trains=base.get_input_embeddings().weight.requires_grad,
        norm_trains=_norm_trains(base.blocks[0]),
        tied_head=base.is_tied,
        prompt_length=model.num_virtual_tokens if isinstance(model, PromptModel) else 0,
        has_biases=bool(bias_params(base.backbone)),
        quantized_bytes=sum(b.numel() * b.element_size() for m in nf4 for b in m.buffers()),
        largest_quantized=max((m.in_features * m.out_features for m in nf4), default=0),
        compute_dtype_elements=cast[1],
    )


def _linears(model: nn.Module, cast: set[str] = frozenset()) -> dict[str, Linear]:
    """Every ``nn.Linear`` / ``NF4Linear`` of ``model`` by qualified name; a LoRA / adapter layer is one entry with
    its PEFT settings (the adapter's own down / up linears are part of it, not entries); ``cast``: the linears
    whose frozen weight a run stores in the autocast dtype."""
    inside = tuple(name + "." for name in peft_modules(model))
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, NF4Linear)) or name.startswith(inside):
            continue
        bias = m.bias is not None
        quantized = isinstance(m, NF4Linear)
        extra = {"quantized": quantized, "weight_cast": name in cast}
        if isinstance(m, LoRAPath):
            dropout = m.lora_dropout.p if isinstance(m.lora_dropout, nn.Dropout) else 0.0
            extra |= {"lora_r": m.r, "lora_dropout": dropout}
        elif isinstance(m, AdapterPath):
            extra |= {"adapter_size": m.adapter.down.out_features, "adapter_activation": _activation(m.adapter.act)}
        out[name] = Linear(name, m.in_features, m.out_features, bias, not quantized and m.weight.requires_grad,
                           bias and m.bias.requires_grad, **extra)
    return out


def _activation(module: nn.Module) -> str:
    return type(module).__name__.lower()  # nn.ReLU → "relu", nn.GELU → "gelu", nn.Tanh → "tanh", nn.SiLU → "silu"


def _norm_trains(block: nn.Module) -> tuple[bool, bool]:
    """(weight, bias) trainability of the block's norms: the first module owning a 1-D ``weight`` that is not a
    linear or an embedding (every norm of a model trains alike under every method)."""
    for m in block.modules():
        weight = m._parameters.get("weight")
        if weight is not None and weight.ndim == 1 and not isinstance(m, (nn.Linear, nn.Embedding)):
            bias = m._parameters.get("bias")
            return weight.requires_grad, bias is not None and bias.requires_grad
    return False, False


class _Stop(Exception):
    """Raised at the first block: the length check needs only the model's own input handling."""


def check_length(config: ModelConfig, head: str | None, method: Method, length: int,
                 quantize: NF4Config | None = None) -> None:
    """Raise ``ValueError`` when the model cannot take ``length``-token sequences (+ a soft prompt).

    The model's own forward says so (learned position tables, RoBERTa's offset, the prompt's extra tokens): it
    runs on the meta device up to the first block. What the meta device cannot run there (RoPE's autocast guard)
    is not a length limit: those models have no position table to overflow.
    """
    model, facts = _cached(config, head, method, quantize)
    if length not in facts.lengths:
        facts.lengths[length] = _run_embeddings(model, length)
    if facts.lengths[length]:
        raise ValueError(facts.lengths[length])


def _run_embeddings(model: nn.Module, length: int) -> str:
    def stop(module, args, kwargs):
        raise _Stop

    handle = model.blocks[0].register_forward_pre_hook(stop, with_kwargs=True)
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(1, length, dtype=torch.long, device="meta"))
    except _Stop:
        pass
    except ValueError as e:
        return str(e)
    except (RuntimeError, NotImplementedError):
        pass
    finally:
        handle.remove()
    return ""
