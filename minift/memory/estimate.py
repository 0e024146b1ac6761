"""``estimate(config, method, setup)``: GPU memory of one fine-tuning step, term by term, and its peak.

Terms (bytes), for a model of P parameters of which P_t train:

- weights: P × 4 (fp32 and mixed precision: the fp32 weights are the master copy) or P × 2 (pure bf16); under
  autocast (``--precision bf16`` / ``fp16``, one process or DDP) the frozen weights and biases of ``nn.Linear``
  layers take 2 bytes: ``minift.train`` stores them once in the autocast dtype
  (``minift.precision.frozen_in_compute_dtype``; not those a run saves, nor a tied embedding / LM head, nor the
  trainable ones, which keep their fp32 master copy; ``params.py`` reads which off the meta model); with a
  4-bit base (``--quantize nf4``, QLoRA) the block linears' weights are their NF4 codes and block scales instead
  (0.5 + 1/64 + 4/16384 bytes per weight with double quantisation, ``minift.quant.nf4_bytes``), the rest as above;
- dequantised layer (4-bit base only): one block linear's weight dequantised to the compute dtype, alive for one
  matmul in forward and again in backward (``minift.quant.dequantize_bytes``; the frozen 4-bit base keeps no fp
  copy and makes no autocast copy);
- gradients: P_t × the weight dtype (frozen parameters get none);
- optimizer states: AdamW m and v, 2 × P_t × the weight dtype (``torch.optim.AdamW`` keeps them in the
  parameter's dtype); SGD none, with momentum one buffer; "adamw-8bit" is a what-if of block-wise 8-bit states
  (1 byte each + an fp32 scale per 256 values);
- optimizer temporaries at ``step()``: a ``foreach`` AdamW computes ``sqrt(v)`` for *all* tensors at once
  (P_t × dtype); the per-tensor loop (minift's default, ``foreach=False``) holds two temporaries of the
  largest tensor; the fused kernel none;
- activations: what autograd keeps for backward, from the symbolic tape in ``activations.py``;
- logits buffers: the (B, T, V) logits the loop holds, plus the fp32 copies the loss makes and the two (N, V)
  fp32 gradient buffers at the start of backward — large for 128k-token vocabularies;
- autocast copies: the bf16/fp16 copies of weights that autocast makes and autograd keeps for backward: of the
  trainable linears' weights (full fine-tuning, LoRA's A and B, adapters) and of a tied LM head — the frozen
  linears' weights are in the autocast dtype already, autocast uses them as they are;
- per GPU under ``torchrun`` (``Setup(gpus=N, shard=...)``, ``sharding.py``): DDP adds its gradient buckets (one
  more copy of the gradients); FSDP divides weights, gradients and optimizer states by N (GPU 0's ``torch.chunk``
  share; a 4-bit base stays whole) and adds the all-gathered units (the root and two blocks, one block's whole
  gradients in backward) while autocast copies nothing.

The peak is the largest of the step's phases, each the set of tensors alive at that moment:
forward end / loss (weights, states, activations, logits and the loss's copies), backward (activations are
freed block by block from the last while gradients are allocated block by block, so every block boundary is
checked, plus the working set of one block's backward, and with checkpointing the recomputed block), and the
optimizer step (weights, gradients, states and the step's temporaries). Steady state (after step 2, gradients
set to None) is weights + states.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from minift.memory.activations import Activations, Batch, memory_spec, trace_activations
from minift.memory.params import ModelFacts, ParamCount, check_length, meta_model, model_facts
from minift.memory.sharding import SHARDS, fsdp_units, gathered_bytes
from minift.models.config import ModelConfig
from minift.models.registry import get_family
from minift.peft.config import Method
from minift.precision import autocast_dtype, canonical, param_dtype
from minift.quant import QUANTIZE_FORMATS, NF4Config, compute_dtype_for, dequantize_bytes

OPTIMIZERS = ("adamw", "adamw-foreach", "adamw-fused", "sgd", "sgd-momentum", "adamw-8bit")
ATTENTIONS = ("sdpa", "eager")
GiB = 1024**3


@dataclass(frozen=True)
class Setup:
    """How the step runs (everything but the model and the method); names and meanings as in ``minift.train``."""

    batch_size: int = 1  # sequences per micro-batch
    max_length: int = 512  # tokens per sequence (before a soft prompt is added)
    precision: str = "fp32"  # minift.precision: fp32 | fp16 | bf16 (fp32 weights + autocast) | bf16-pure
    optimizer: str = "adamw"  # one of OPTIMIZERS; "adamw" is minift's per-tensor AdamW (foreach=False)
    gradient_checkpointing: bool = False  # recompute each block in backward
    attention: str = "sdpa"  # "sdpa" (fused flash / memory-efficient) or "eager" (math: keeps T×T scores)
    head: str | None = "auto"  # "auto": the family's default head (causal-lm for decoders), else classification
    padded: bool = False  # batches carry an attention mask with padding (explicit masks instead of is_causal)
    device: str = "cuda"  # "cuda" or "cpu" (dropout masks and the CPU SDPA fallback differ)
    grad_accum: int = 1  # micro-batches per optimizer step (from the 2nd on, gradients already exist)
    quantize: str | None = None  # "nf4": the frozen base's block linears in 4 bits (QLoRA); None: as loaded
    double_quant: bool = True  # with quantize: the block scales quantised to 8 bits too
    gpus: int = 1  # processes under torchrun (one GPU each); the estimate is per GPU, batch_size per GPU
    shard: str = "ddp"  # with gpus > 1: "ddp" (a whole copy per GPU) or "fsdp" (FSDP2: weights, grads, states / N)

    def __post_init__(self):
        for name in ("batch_size", "max_length", "grad_accum", "gpus"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        object.__setattr__(self, "precision", canonical(self.precision))  # mixed-bf16 → bf16, mixed-fp16 → fp16
        choices = {"optimizer": OPTIMIZERS, "attention": ATTENTIONS, "device": ("cuda", "cpu"),
                   "quantize": (None, *QUANTIZE_FORMATS), "shard": SHARDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of "
                                 f"{', '.join(str(a) for a in allowed)}")

    @property
    def param_itemsize(self) -> int:
        return 2 if self.precision == "bf16-pure" else 4

    @property
    def autocast(self) -> bool:
        return autocast_dtype(self.precision) is not None

    @property
    def fsdp(self) -> bool:
        """Sharded by FSDP2 (one GPU trains the whole model, whatever ``shard`` says)."""
        return self.gpus > 1 and self.shard == "fsdp"

    @property
    def gather_itemsize(self) -> int:
        """Bytes per element of FSDP's all-gathered parameters: the autocast dtype's, else the parameters'."""
        return 2 if self.autocast else self.param_itemsize

    @property
    def reduce_itemsize(self) -> int:
        """Bytes per element of FSDP's reduce-scattered gradients: fp32 under autocast, else the parameters'."""
        return 4 if self.autocast else self.param_itemsize

    @property
    def nf4(self) -> NF4Config | None:
        """The ``minift.quant.NF4Config`` a run with these settings loads its base with (None: unquantised)."""
        return NF4Config(double_quant=self.double_quant) if self.quantize == "nf4" else None

    @property
    def compute_itemsize(self) -> int:
        """Bytes per element of a dequantised 4-bit weight: the autocast dtype, else ``compute_dtype_for``."""
        if self.autocast:
            return 2
        return compute_dtype_for(self.device, param_dtype(self.precision)).itemsize

    def resolved_head(self, config: ModelConfig) -> str | None:
        if self.head != "auto":
            return self.head
        return get_family(config.model_type).default_head or "classification"


@dataclass
class Estimate:
    """One method's memory (bytes) and the phase where the peak happens."""

    method: str
    params: ParamCount
    weights: int
    gradients: int
    optimizer_states: int
    optimizer_temporaries: int
    activations: Activations
    logits_buffers: int
    autocast_copies: int
    dequantized: int = 0  # one 4-bit weight dequantised for a matmul (transient; 0 without a quantised base)
    gathered: int = 0  # FSDP: whole parameters (and one block's whole gradients) alive at once in backward
    ddp_buckets: int = 0  # DDP: the reducer's gradient buckets (a copy of every gradient, for the whole run)
    phases: dict[str, int] = field(default_factory=dict)
    extra: dict[str, int] = field(default_factory=dict)  # logits_live, loss_temp, grad_start, head_grads

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def steady(self) -> int:
        """Allocated between steps (after step 2, gradients set to None): weights and optimizer states."""
        return self.weights + self.optimizer_states

    def to_dict(self) -> dict:
        act = self.activations
        return {
            "method": self.method, "params_total": self.params.total, "params_trainable": self.params.trainable,
            "weights": self.weights, "gradients": self.gradients, "optimizer_states": self.optimizer_states,
            "optimizer_temporaries": self.optimizer_temporaries,
            "activations": {"total": act.total - act.logits, "embeddings": act.embeddings,
                            "per_layer": act.per_layer, "layers_kept": act.layers, "head_and_loss": act.head,
                            "checkpointed": act.checkpointed},
            "logits_buffers": self.logits_buffers + act.logits, "autocast_copies": self.autocast_copies,
            "dequantized": self.dequantized, "quantized_weights": self.params.quantized,
            "gathered": self.gathered, "ddp_buckets": self.ddp_buckets,
            "phases": dict(self.phases), "peak": self.peak, "peak_phase": self.peak_phase, "steady": self.steady,
        }


def _state_bytes(optimizer: str, trainable: int, itemsize: int) -> int:
    if optimizer.startswith("adamw-8bit"):
        return 2 * trainable + 2 * 4 * math.ceil(trainable / 256)
    if optimizer.startswith("adamw"):
        return 2 * trainable * itemsize
    return trainable * itemsize if optimizer == "sgd-momentum" else 0


def _backward_working_set(config: ModelConfig, setup: Setup, T: int) -> int:
    """Gradient buffers alive beyond the block's kept activations inside one block's backward: the MLP's
    (B, T, F) gradients (three for SwiGLU, two for GELU; measured on CPU by ``timeline.py``), or the T×T
    probability and score gradients of eager attention, whichever is larger."""
    B, F = setup.batch_size, config.intermediate_size
    act = 2 if (setup.autocast or setup.param_itemsize == 2) else 4
    mlp = (len(memory_spec(config).mlp) + 1) * B * T * F * act
    attn = 2 * B * config.num_heads * T * T * 4 if setup.attention == "eager" else 0
    return max(mlp, attn)


def _facts(config: ModelConfig, method: Method, setup: Setup) -> tuple[ModelFacts, str | None]:
    """The model's facts (``params.model_facts``) after the checks a run would fail: a head the family lacks,
    a method ``minift.peft.apply`` refuses, a sequence the model cannot take."""
    memory_spec(config)
    head = setup.resolved_head(config)
    facts = model_facts(config, head, method, setup.nf4)
    try:
        check_length(config, head, method, setup.max_length, setup.nf4)
    except ValueError as e:
        flags = "--max-length" + (" or --prompt-length" if facts.prompt_length else "")
        raise ValueError(f"{method.label()} cannot run {setup.max_length}-token sequences: {e}; "
                         f"lower {flags}") from None
    return facts, head


def _logits(config: ModelConfig, setup: Setup, head: str | None) -> dict[str, int]:
    """The (B, T, V) buffers of a causal-LM step: the logits the loop holds, the loss's fp32 copies, and the
    two (N, V) fp32 gradients at the start of backward."""
    B, T0, V = setup.batch_size, setup.max_length, config.vocab_size
    out_item = 2 if (setup.autocast or setup.param_itemsize == 2) else 4  # matmul outputs' dtype (the logits')
    if head != "causal-lm":
        return {"logits_live": 0, "loss_temp": 0, "grad_start": 0, "out_item": out_item}
    N = B * (T0 - 1)
    return {"logits_live": B * T0 * V * out_item,  # the loop holds the model output through backward
            "loss_temp": (B * T0 * V * 4 if out_item != 4 else 0) + N * V * 4,  # .float() copy, shifted flat copy
            "grad_start": 2 * N * V * 4,  # nll and log-softmax gradients
            "out_item": out_item}


def estimate(config: ModelConfig, method: Method | None = None, setup: Setup | None = None) -> Estimate:
    """Memory of one training step of ``config`` fine-tuned with ``method`` under ``setup``.

    Args:
        config: the model's ``ModelConfig`` (``ModelConfig.from_hf(config_json)``, a preset, ...).
        method: ``minift.peft.config.Method`` (default: full fine-tuning), as ``minift.train`` runs it.
        setup: ``Setup`` (default: batch 1, 512 tokens, fp32, AdamW).

    Returns:
        ``Estimate`` with every term and the phases (bytes); ``estimate(...).peak`` is the peak allocated.

    Raises:
        ValueError: the run could not happen (a head the family lacks, LoRA targets that match nothing, BitFit
            without biases, a sequence longer than the model's positions), said as ``minift.peft`` / the model
            would say it.
    """
    method, setup = method or Method(), setup or Setup()
    facts, head = _facts(config, method, setup)
    item = setup.param_itemsize
    counts = facts.params
    act = trace_activations(config, method, Batch(setup.batch_size, setup.max_length, setup.padded), head,
                            device=setup.device, autocast=setup.autocast, param_itemsize=item,
                            attention=setup.attention, grad_checkpointing=setup.gradient_checkpointing,
                            quantize=setup.nf4, frozen_cast=not setup.fsdp)
    trainable, largest_trainable = counts.trainable, facts.largest_trainable
    weights = (counts.total - counts.quantized) * item + facts.quantized_bytes
    if setup.autocast:  # frozen linear weights stored in the autocast dtype (minift.train; not under FSDP)
        weights -= facts.compute_dtype_elements * (item - autocast_dtype(setup.precision).itemsize)
    units = fsdp_units(meta_model(config, head, method, setup.nf4), setup.gpus) if setup.fsdp else None
    if units is not None:  # GPU 0's shares of the parameters (a 4-bit base's codes are buffers: whole)
        weights = units.shard * item + facts.quantized_bytes
        trainable, largest_trainable = units.trainable_shard, units.largest_trainable_shard
        # the gathered parameters are in autocast's dtype already: it copies nothing
        act = replace(act, weight_copies=0, layer_copies=0, copies_per_layer=[0] * len(act.per_layer),
                      cached_copies=0)
    grads = trainable * item
    nf4 = setup.nf4
    dequantized = dequantize_bytes(facts.largest_quantized, setup.compute_itemsize, nf4.block_size,
                                   nf4.double_quant) if nf4 is not None and facts.largest_quantized else 0
    states = _state_bytes(setup.optimizer, trainable, item)
    largest = largest_trainable * item
    # per-tensor AdamW: sqrt(v) and its quotient; SGD with weight decay: grad + wd·param (minift decays weights)
    temps = {"adamw": 2 * largest, "adamw-foreach": grads, "sgd": largest, "sgd-momentum": largest}
    temp = temps.get(setup.optimizer, 0)
    logits = _logits(config, setup, head)
    # the tied embedding's gradient: lm_head's contribution comes first, the lookup's at the end of backward
    vc = config.vocab_size * config.hidden_size * (setup.gather_itemsize if units else item) if (
        facts.tied_head and facts.embedding_trains and head == "causal-lm") else 0
    buckets = grads if setup.gpus > 1 and setup.shard == "ddp" else 0  # DDP's copy of every gradient
    phases = _phases(config, setup, facts, act, logits, weights + states + buckets, grads, vc, dequantized, units)
    phases["optimizer step"] = weights + grads + states + temp + buckets
    return Estimate(method=method.label(), params=counts, weights=weights, gradients=grads,
                    optimizer_states=states, optimizer_temporaries=temp, activations=act,
                    logits_buffers=logits["logits_live"] + logits["loss_temp"], autocast_copies=act.weight_copies,
                    dequantized=dequantized, phases=phases, ddp_buckets=buckets,
                    gathered=gathered_bytes(units, setup.gather_itemsize, setup.reduce_itemsize)["backward"]
                    if units else 0,
                    extra={"logits_live": logits["logits_live"], "loss_temp": logits["loss_temp"],
                           "grad_start": logits["grad_start"],
                           "head_grads": facts.head_trainable * item if setup.grad_accum == 1 else 0})


def _phases(config: ModelConfig, setup: Setup, facts: ModelFacts, act: Activations, logits: dict[str, int],
            persistent: int, grads: int, vc: int, dequantized: int = 0, units=None) -> dict[str, int]:
    """Bytes alive in the forward + loss, at the start of backward and through the blocks' backward
    (``dequantized``: one 4-bit weight dequantised for the matmul running at that moment; ``units``: the FSDP
    units, whose gathered parameters come on top, with gradients sharded as each block's backward ends and the
    root's whole until the end of backward)."""
    B, T0, C, V = setup.batch_size, setup.max_length, config.hidden_size, config.vocab_size
    T = T0 + facts.prompt_length
    item, act_item = setup.param_itemsize, logits["out_item"]  # bf16 under autocast or with bf16 weights
    logits_live, causal_lm = logits["logits_live"], logits["grad_start"] > 0
    head_grads = facts.head_trainable * item
    layer_grads = [n * item for n in facts.block_trainable]
    gathered = {"forward": 0, "backward": 0}
    if units is not None:
        gathered = gathered_bytes(units, setup.gather_itemsize, setup.reduce_itemsize)
        head_grads = facts.head_trainable * setup.gather_itemsize
        layer_grads = [n * item for n in units.block_trainable_shard]
    accumulated = 0
    if setup.grad_accum > 1:  # a later micro-batch runs with every gradient allocated by the first
        accumulated, head_grads, layer_grads = grads, 0, [0] * len(layer_grads)
    # A frozen MLP output projection keeps no input, so the (B, T, F) activation output and two (B, T, C)
    # buffers are alive but not saved while the last block runs its MLP.
    mlp_out = (B * T * config.intermediate_size + 2 * B * T * C) * act_item
    down = facts.linears[f"{facts.blocks[-1]}.{get_family(config.model_type).adapter_sites['ffn']}"]
    forward_transient = 0 if down.weight_trains else mlp_out
    if facts.prompt_length:  # PromptModel holds the word embeddings and the prompted input through forward
        forward_transient += (B * T0 * C + B * T * C) * item
    if act.checkpointed:  # nothing inside a checkpointed block is kept: its MLP intermediates are transient
        forward_transient = max(forward_transient, mlp_out)
    if down.quantized:  # the last block's 4-bit down projection: its weight is dequantised (with the gather's
        # temporaries) while only its (B, T, F) input is alive, then the matmul runs on the weight alone
        weight = facts.largest_quantized * setup.compute_itemsize
        forward_transient = max(forward_transient + weight, B * T * config.intermediate_size * act_item + dequantized)
    head_backward = 0
    if causal_lm:  # lm_head backward: (B, T, V) fp32 logits gradient (+ its cast), weight and input grads
        N = B * (T0 - 1)
        head_backward = (act.total - N * V * 4 + logits_live + B * T0 * V * (4 + (act_item if act_item != 4 else 0))
                         + head_grads + B * T * C * 4)
        if facts.prompt_length:  # the virtual positions are cut off the logits: their gradient is re-padded
            head_backward += B * T * V * act_item
    base = persistent + accumulated + act.weight_copies + gathered["forward"]
    phases = {
        # inside the model (autocast's cache alive) / computing the loss (outside autocast, as minift.train does)
        "forward+loss": base + max(act.total - act.logits + act.cached_copies + max(logits_live, forward_transient),
                                   act.total + logits_live + logits["loss_temp"]),
        "backward start": base + max(act.total + logits_live + logits["grad_start"], head_backward),
    }
    # a 4-bit linear dequantises its weight again for its grad-input, before the MLP working set is allocated
    work = max(_backward_working_set(config, setup, T), dequantized)
    # Blocks keep their activations and their autocast weight copies until backward passes through them.
    layers = len(act.per_layer)
    if act.checkpointed:
        kept = [act.block_inputs // max(layers, 1)] * layers
    else:
        kept = [a + c for a, c in zip(act.per_layer, act.copies_per_layer)]
    below = act.embeddings + sum(kept)
    above_grads = head_grads
    worst = 0
    for i in reversed(range(layers)):  # block i's backward: blocks ≤ i still kept, grads of > i exist
        recomputed = act.per_layer[i] + act.layer_copies if act.checkpointed else 0
        worst = max(worst, below + recomputed + above_grads + work)
        below -= kept[i]
        above_grads += layer_grads[i]
    blocks_base = persistent + accumulated + logits_live
    # End of backward: every gradient exists; a tied embedding's two contributions (lm_head's and the lookup's)
    # are summed in autograd's input buffer before they reach .grad — out of place when lm_head's gradient is a
    # transposed matmul result (three V×C tensors at once), in place when autocast's cast made it contiguous.
    copies = 2 if setup.autocast else 3
    if units is not None:  # the blocks' gradients sharded, the root's whole (a tied embedding's among them)
        done = 0 if accumulated else grads
        end = (blocks_base + act.embeddings + done + gathered["forward"]
               + units.root_trainable * setup.gather_itemsize + (copies - 1) * vc)
    else:
        done = 0 if accumulated else grads - vc
        end = blocks_base + act.embeddings + done + copies * vc
    phases["backward (blocks)"] = max(blocks_base + worst + gathered["backward"], end)
    return phases


def fits(estimate_: Estimate, gpu_bytes: int) -> bool:
    """Whether the peak fits a GPU of ``gpu_bytes``, keeping 5% for allocator fragmentation and 0.75 GiB for
    the CUDA context and cuBLAS workspaces (neither is counted by ``torch.cuda.memory_allocated``)."""
    return estimate_.peak <= usable(gpu_bytes)


def usable(gpu_bytes: int) -> int:
    return int(0.95 * gpu_bytes - 0.75 * GiB)


def largest_batch(config: ModelConfig, method: Method, setup: Setup, gpu_bytes: int, limit: int = 4096) -> int:
    """The largest batch size whose peak fits ``gpu_bytes`` (0 when not even batch 1 fits)."""
    def ok(b: int) -> bool:
        return fits(estimate(config, method, replace(setup, batch_size=b)), gpu_bytes)
    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and ok(hi):
        lo, hi = hi, hi * 2
    if hi > limit:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo
