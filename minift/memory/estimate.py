"""``estimate(config, method, setup)``: GPU memory of one fine-tuning step, term by term, and its peak.

Terms (bytes), for a model of P parameters of which P_t train:

- weights: P × 4 (fp32 and mixed precision: the fp32 weights are the master copy) or P × 2 (pure bf16);
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
- autocast copies: the bf16/fp16 copies of weights that autocast makes and autograd keeps for backward.

The peak is the largest of the step's phases, each the set of tensors alive at that moment:
forward end / loss (weights, states, activations, logits and the loss's copies), backward (activations are
freed block by block from the last while gradients are allocated block by block, so every block boundary is
checked, plus the working set of one block's backward, and with checkpointing the recomputed block), and the
optimizer step (weights, gradients, states and the step's temporaries). Steady state (after step 2, gradients
set to None) is weights + states.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from minift.memory.activations import Activations, Batch, trace_activations
from minift.memory.params import (
    Method,
    ParamCount,
    adapter_numel,
    block_linears,
    count_params,
    embedding_numel,
    head_linears,
    norm_numel,
)
from minift.models.config import ModelConfig

PRECISIONS = ("fp32", "mixed-bf16", "mixed-fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw-foreach", "adamw-fused", "sgd", "sgd-momentum", "adamw-8bit")
ATTENTIONS = ("sdpa", "eager")
GiB = 1024**3


@dataclass(frozen=True)
class Setup:
    """How the step runs (everything but the model and the method)."""

    batch_size: int = 1  # sequences per step
    seq_len: int = 512  # tokens per sequence
    precision: str = "fp32"  # one of PRECISIONS; "mixed-*" = fp32 weights + autocast, "bf16" = pure bf16
    optimizer: str = "adamw"  # one of OPTIMIZERS; "adamw" is minift's per-tensor AdamW (foreach=False)
    grad_checkpointing: bool = False  # recompute each block in backward
    attention: str = "sdpa"  # "sdpa" (fused flash / memory-efficient) or "eager" (math: keeps T×T scores)
    head: str | None = "auto"  # "auto": causal-lm for decoders, classification for encoders
    padded: bool = False  # batches carry an attention mask with padding (explicit masks instead of is_causal)
    device: str = "cuda"  # "cuda" or "cpu" (dropout masks and the CPU SDPA fallback differ)
    grad_accumulation: int = 1  # micro-batches per optimizer step (from the 2nd on, gradients already exist)

    def __post_init__(self):
        for name in ("batch_size", "seq_len", "grad_accumulation"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        choices = {"precision": PRECISIONS, "optimizer": OPTIMIZERS, "attention": ATTENTIONS,
                   "device": ("cuda", "cpu")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")

    @property
    def param_itemsize(self) -> int:
        return 2 if self.precision == "bf16" else 4

    @property
    def autocast(self) -> bool:
        return self.precision.startswith("mixed")

    def resolved_head(self, config: ModelConfig) -> str | None:
        if self.head != "auto":
            return self.head
        return "causal-lm" if config.is_decoder else "classification"


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
            "phases": dict(self.phases), "peak": self.peak, "peak_phase": self.peak_phase, "steady": self.steady,
        }


def _state_bytes(optimizer: str, trainable: int, itemsize: int) -> int:
    if optimizer.startswith("adamw-8bit"):
        return 2 * trainable + 2 * 4 * math.ceil(trainable / 256)
    if optimizer.startswith("adamw"):
        return 2 * trainable * itemsize
    return trainable * itemsize if optimizer == "sgd-momentum" else 0


def _largest_trainable(config: ModelConfig, method: Method, head: str | None) -> int:
    """Elements of the largest trainable tensor (what a per-tensor optimizer step works on at once)."""
    t = config.model_type
    sizes = []
    if method.name == "full":
        sizes += [lin.in_f * lin.out_f for lin in block_linears(config) + head_linears(config, head)]
        sizes += [n for k, n in embedding_numel(config).items() if k != "norm"]
    elif method.name == "lora":
        sizes += [method.lora_r * max(lin.in_f, lin.out_f) for lin in block_linears(config)
                  if method.lora_on(t, lin.name)]
    elif method.name == "adapter":
        sizes.append(config.hidden_size * method.adapter_size)
    elif method.name == "prompt":
        sizes.append(method.prompt_length * config.hidden_size)
    if method.head_trains(head):
        sizes += [lin.in_f * lin.out_f for lin in head_linears(config, head) if not lin.name.startswith("pooler")]
    return max(sizes + [config.intermediate_size])


def _layer_trainable(config: ModelConfig, method: Method) -> int:
    """Trainable elements of one block (its gradients appear while backward passes through it)."""
    t, linears = config.model_type, block_linears(config)
    if method.name == "full":
        return sum(lin.numel for lin in linears) + 2 * norm_numel(config)
    if method.name == "lora":
        return sum(method.lora_r * (lin.in_f + lin.out_f) for lin in linears if method.lora_on(t, lin.name))
    if method.name == "adapter":
        return sum(adapter_numel(config, method.adapter_size) for lin in linears if method.adapter_on(t, lin.name))
    if method.name == "bitfit":
        return sum(lin.out_f for lin in linears if lin.bias) + (2 * config.hidden_size if t != "llama" else 0)
    return 0


def _backward_working_set(config: ModelConfig, setup: Setup, T: int) -> int:
    """Gradient buffers alive beyond the block's kept activations inside one block's backward: the MLP's
    (B, T, F) gradients (three for SwiGLU, two for GELU; measured on CPU by ``timeline.py``), or the T×T
    probability and score gradients of eager attention, whichever is larger."""
    B, F = setup.batch_size, config.intermediate_size
    act = 2 if (setup.autocast or setup.precision == "bf16") else 4
    mlp = (3 if config.model_type == "llama" else 2) * B * T * F * act
    attn = 2 * B * config.num_heads * T * T * 4 if setup.attention == "eager" else 0
    return max(mlp, attn)


def estimate(config: ModelConfig, method: Method | None = None, setup: Setup | None = None) -> Estimate:
    """Memory of one training step of ``config`` fine-tuned with ``method`` under ``setup``.

    Args:
        config: the model's ``ModelConfig`` (``ModelConfig.from_hf(config_json)``, a preset, ...).
        method: ``Method`` (default: full fine-tuning).
        setup: ``Setup`` (default: batch 1, 512 tokens, fp32, AdamW).

    Returns:
        ``Estimate`` with every term and the phases (bytes); ``estimate(...).peak`` is the peak allocated.
    """
    method, setup = method or Method(), setup or Setup()
    head = setup.resolved_head(config)
    if head == "causal-lm" and not config.is_decoder:
        raise ValueError(f"a {config.model_type} encoder has no causal-LM head; use --head classification")
    T0 = setup.seq_len
    T = T0 + (method.prompt_length if method.name == "prompt" else 0)
    if config.model_type in ("bert", "roberta", "gpt2", "gpt_neo") and T > config.max_position_embeddings:
        raise ValueError(f"sequence of {T} tokens exceeds {config.model_type}'s {config.max_position_embeddings} "
                         "learned positions; lower --seq-len (or --prompt-length)")
    if method.name == "lora" and not any(method.lora_on(config.model_type, lin.name) for lin in block_linears(config)):
        names = sorted({lin.name.rpartition(".")[2] for lin in block_linears(config)})
        raise ValueError(f"LoRA targets {list(method.targets(config.model_type))} match no linear of a "
                         f"{config.model_type} block; its linears are {names}")
    item = setup.param_itemsize
    counts = count_params(config, head, method)
    act = trace_activations(config, method, Batch(setup.batch_size, T0, setup.padded), head,
                            device=setup.device, autocast=setup.autocast, param_itemsize=item,
                            attention=setup.attention, grad_checkpointing=setup.grad_checkpointing)
    weights, grads = counts.total * item, counts.trainable * item
    states = _state_bytes(setup.optimizer, counts.trainable, item)
    largest = _largest_trainable(config, method, head) * item
    # per-tensor AdamW: sqrt(v) and its quotient; SGD with weight decay: grad + wd·param (minift decays weights)
    temps = {"adamw": 2 * largest, "adamw-foreach": grads, "sgd": largest, "sgd-momentum": largest}
    temp = temps.get(setup.optimizer, 0)
    copies = act.weight_copies

    B, V = setup.batch_size, config.vocab_size
    logits_live = loss_temp = grad_start = 0
    out_item = 2 if (setup.autocast or item == 2) else 4  # dtype of matmul outputs (the logits among them)
    if head == "causal-lm":
        N = B * (T0 - 1)
        logits_live = B * T0 * V * out_item  # the loop holds the model output through backward
        loss_temp = (B * T0 * V * 4 if out_item != 4 else 0) + N * V * 4  # .float() copy, shifted flat copy
        grad_start = 2 * N * V * 4  # nll and log-softmax gradients
    persistent = weights + states
    head_grads = 0
    if method.name == "full" and head == "causal-lm" and config.tie_word_embeddings:
        head_grads = config.vocab_size * config.hidden_size * item  # tied lm_head: the embedding grad comes first
    elif method.head_trains(head):
        head_grads = sum(lin.numel for lin in head_linears(config, head) if not lin.name.startswith("pooler")) * item
    layer_grad = _layer_trainable(config, method) * item
    accumulated = 0
    if setup.grad_accumulation > 1:  # a later micro-batch runs with every gradient allocated by the first
        accumulated, head_grads, layer_grad = grads, 0, 0
    C, act_item = config.hidden_size, out_item  # bf16 under autocast or with bf16 weights, else fp32
    # Frozen MLP output projections keep no input, so the (B, T, F) activation output and two (B, T, C)
    # buffers are alive but not saved while the last block runs its MLP.
    forward_transient = 0 if method.name == "full" else (B * T * config.intermediate_size + 2 * B * T * C) * act_item
    if method.name == "prompt":  # PromptModel holds the word embeddings and the prompted input through forward
        forward_transient += (B * T0 * C + B * T * C) * item
    if act.checkpointed:  # nothing inside a checkpointed block is kept: its MLP intermediates are transient
        forward_transient = max(forward_transient, (B * T * config.intermediate_size + 2 * B * T * C) * act_item)
    head_backward = 0
    if head == "causal-lm":  # lm_head backward: (B, T, V) fp32 logits gradient (+ its cast), weight and input grads
        N = B * (T0 - 1)
        head_backward = (act.total - N * V * 4 + logits_live + B * T0 * V * (4 + (out_item if out_item != 4 else 0))
                         + head_grads + B * T * C * 4)
        if method.name == "prompt":  # the virtual positions are cut off the logits: their gradient is re-padded
            head_backward += B * T * V * out_item
    base = persistent + accumulated + copies
    phases = {
        # inside the model (autocast's cache alive) / computing the loss (outside autocast, as minift.train does)
        "forward+loss": base + max(act.total - act.logits + act.cached_copies + max(logits_live, forward_transient),
                                   act.total + logits_live + loss_temp),
        "backward start": base + max(act.total + logits_live + grad_start, head_backward),
    }
    work = _backward_working_set(config, setup, T)
    # Blocks keep their activations and their autocast weight copies until backward passes through them.
    if act.checkpointed:
        kept = [act.block_inputs // max(config.num_layers, 1)] * config.num_layers
    else:
        kept = [a + c for a, c in zip(act.per_layer, act.copies_per_layer)]
    below = act.embeddings + sum(kept)
    above_grads = head_grads
    worst = 0
    for i in reversed(range(config.num_layers)):  # block i's backward: blocks ≤ i still kept, grads of > i exist
        recomputed = act.per_layer[i] + act.layer_copies if act.checkpointed else 0
        live = below + recomputed + above_grads + work
        worst = max(worst, live)
        below -= kept[i]
        above_grads += layer_grad
    blocks_base = persistent + accumulated + logits_live
    # End of backward: every gradient exists; a tied embedding's two contributions (lm_head's and the lookup's)
    # are summed in autograd's input buffer before they reach .grad — out of place when lm_head's gradient is a
    # transposed matmul result (three V×C tensors at once), in place when autocast's cast made it contiguous.
    vc = config.vocab_size * C * item if (method.name == "full" and head == "causal-lm"
                                          and config.tie_word_embeddings) else 0
    done = 0 if accumulated else grads - vc
    end = blocks_base + act.embeddings + done + (2 if setup.autocast else 3) * vc
    phases["backward (blocks)"] = max(blocks_base + worst, end)
    phases["optimizer step"] = weights + grads + states + temp
    return Estimate(method=method.label(), params=counts, weights=weights, gradients=grads,
                    optimizer_states=states, optimizer_temporaries=temp, activations=act,
                    logits_buffers=logits_live + loss_temp, autocast_copies=copies, phases=phases,
                    extra={"logits_live": logits_live, "loss_temp": loss_temp, "grad_start": grad_start,
                           "head_grads": head_grads})


def fits(estimate_: Estimate, gpu_bytes: int) -> bool:
    """Whether the peak fits a GPU of ``gpu_bytes``, keeping 5% for allocator fragmentation and 0.75 GiB for
    the CUDA context and cuBLAS workspaces (neither is counted by ``torch.cuda.memory_allocated``)."""
    return estimate_.peak <= usable(gpu_bytes)


def usable(gpu_bytes: int) -> int:
    return int(0.95 * gpu_bytes - 0.75 * GiB)


def largest_batch(config: ModelConfig, method: Method, setup: Setup, gpu_bytes: int, limit: int = 4096) -> int:
    """The largest batch size whose peak fits ``gpu_bytes`` (0 when not even batch 1 fits)."""
    def ok(b: int) -> bool:
        return fits(estimate(config, method, Setup(**{**asdict(setup), "batch_size": b})), gpu_bytes)
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
