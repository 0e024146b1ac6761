"""Activation memory of one training forward, for any family, method, precision and attention kernel.

The forward is replayed on a symbolic ``Tape`` (``tracer.py``) operation by operation. What it replays comes from
two places: the model itself, built on the meta device with the method applied (``params.model_facts``: every
linear's shape and bias, the LoRA or adapter around it, what trains, the head modules), and the family's
``MemorySpec`` (``minift.models.registry``): where the norms sit, which linears are q, k, v and the MLP's inputs,
the embedding layout, fp32 attention, rotary positions, the head's steps. The layers ``config.attention_layers``
marks "local" get an explicit sliding-window mask. What the tape saves is what autograd keeps;
``tests/memory/test_saved.py`` checks it against the bytes really saved by our models (``saved.py``).

Korthikanti et al. 2022 (https://arxiv.org/abs/2205.05198), eq. 2, count for one pre-LN GPT layer in fp16
with dropout: attention 11·sbh + 5·as²b, MLP 19·sbh, norms 4·sbh. With fused attention the 5·as²b term
(scores, softmax, dropout mask) is gone — the kernel keeps only q, k, v, the output and a log-sum-exp — and
the family differences show up as: post-LN encoders keep the residual sums, SwiGLU keeps four (B, T, F)
tensors instead of two and RMSNorm keeps an fp32 copy, GQA keys/values are repeated to all heads before SDPA
(so they are kept at full head count), and frozen linears keep no input.

Autocast's weight copies (``Activations.weight_copies``): a linear whose input needs a gradient keeps the bf16/fp16
copy of its weight that autocast made, except where ``minift.train`` stores the frozen weight in the autocast dtype
already (``frozen_cast``: ``Linear.weight_cast``, read off the meta model): autocast then uses the weight itself.
The trainable weights (full fine-tuning, LoRA's A and B, adapters) and a tied LM head keep their copies.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from minift.memory.params import Linear, ModelFacts, model_facts
from minift.memory.tracer import FP32, INT64, Sym, Tape
from minift.models.config import ModelConfig
from minift.models.heads import head_dropout
from minift.models.registry import MemorySpec, get_family
from minift.peft.config import Method
from minift.quant import NF4Config


@dataclass(frozen=True)
class Batch:
    """The shape of a training batch as the estimator sees it."""

    batch_size: int  # B
    seq_len: int  # T, tokens per sequence before a soft prompt is added
    padded: bool = False  # whether the batch has an attention mask with padding (builds explicit masks)


@dataclass
class Activations:
    """Bytes kept for backward by one forward (+ loss), split where they are saved."""

    embeddings: int
    per_layer: list[int]  # one entry per block (the full block; see ``checkpointed``)
    head: int  # pooler/head/final norm and the loss, except the (B, T, V) logits buffers
    logits: int  # fp32 log-softmax kept by cross-entropy over a vocabulary (causal LM), 0 otherwise
    block_inputs: int  # with gradient checkpointing: bytes of the tensors each block keeps for recompute
    checkpointed: bool
    weight_copies: int  # autocast bf16 weight copies kept for backward (with checkpointing: outside the blocks)
    largest_layer: int = 0
    layer_copies: int = 0  # with checkpointing: the copies one recomputed block makes again in backward
    copies_per_layer: list[int] = field(default_factory=list)  # without checkpointing: copies each block keeps
    cached_copies: int = 0  # with checkpointing: trainable weights' copies held by autocast's cache in forward

    @property
    def layers(self) -> int:
        """Bytes the blocks keep for the whole of backward (block inputs when checkpointed)."""
        return self.block_inputs if self.checkpointed else sum(self.per_layer)

    @property
    def total(self) -> int:
        """Everything kept for backward at the end of the forward (logits buffers included)."""
        return self.embeddings + self.layers + self.head + self.logits


def memory_spec(config: ModelConfig) -> MemorySpec:
    """The ``MemorySpec`` of ``config``'s family (a ``ValueError`` when the family has none)."""
    spec = get_family(config.model_type).memory
    if spec is None:
        raise ValueError(f"the memory estimator has no description of {config.model_type} models: its family "
                         "sets no Family.memory (minift.models.registry.MemorySpec)")
    return spec


class _Ctx:
    """What the replay needs: the tape, the config, the family's spec, the model's facts and the batch geometry."""

    def __init__(self, tape: Tape, config: ModelConfig, facts: ModelFacts, B: int, T: int, head: str | None,
                 frozen_cast: bool = True):
        self.tape, self.c, self.facts, self.B, self.T, self.head = tape, config, facts, B, T, head
        self.frozen_cast = frozen_cast  # frozen linear weights stored in the autocast dtype (no copies of them)
        self.family = get_family(config.model_type)
        self.spec = memory_spec(config)
        self.sites = self.family.adapter_sites  # the sub-layers' output projections

    def proj(self, x: Sym, name: str) -> Sym:
        """The linear ``name`` with whatever PEFT module the method swapped in (``LoRALinear`` / ``AdapterLinear``,
        or their 4-bit ``LoRANF4Linear`` / ``AdapterNF4Linear``)."""
        tape, lin = self.tape, self.facts.linears[name]
        copied = "" if self.copies_nothing(lin) else name
        y = tape.linear(x, lin.in_f, lin.out_f, lin.weight_trains, lin.bias_trains, weight=copied)
        if lin.lora_r:
            h = tape.linear(tape.dropout(x, lin.lora_dropout), lin.in_f, lin.lora_r, True, weight=name + ".lora_A")
            z = tape.linear(h, lin.lora_r, lin.out_f, True, weight=name + ".lora_B")  # (B, T, C_out)
            y = tape.add(y, z)
        if lin.adapter_size:
            m = lin.adapter_size
            a = tape.act(tape.linear(y, lin.out_f, m, True, True, weight=name + ".down"), lin.adapter_activation)
            y = tape.add(y, tape.linear(a, m, lin.out_f, True, True, weight=name + ".up"))  # residual
        return y

    def copies_nothing(self, lin: Linear) -> bool:
        """Autocast makes no copy of ``lin``'s weight: it is 4-bit (dequantised per matmul) or minift.train stores
        it frozen in the autocast dtype already."""
        return lin.quantized or (self.frozen_cast and lin.weight_cast)

    def norm(self, x: Sym) -> Sym:
        w_rg, b_rg = self.facts.norm_trains
        if self.spec.norm == "rms":
            return self.tape.rms_norm(x, self.c.hidden_size, w_rg)
        return self.tape.layer_norm(x, self.c.hidden_size, w_rg, b_rg)

    def dropout(self, x: Sym, p: float) -> Sym:
        return self.tape.dropout(x, p) if self.spec.dropout else x

    def attention(self, q: Sym, k: Sym, v: Sym, mask_numel: int) -> Sym:
        """``minift.models.attention.attention`` on (B, H, T, d) views; GQA k/v are repeated first."""
        c, tape = self.c, self.tape
        B, T, H, d = self.B, self.T, c.num_heads, c.head_dim
        if c.num_kv_heads != H:  # repeat_interleave: new full-head tensors (kept by SDPA instead of k, v)
            k = tape.new(B * H * T * d, k.itemsize, k.rg)
            v = tape.new(B * H * T * d, v.itemsize, v.rg)
        y = tape.sdpa(q, k, v, B, H, T, d, mask_numel, c.attention_dropout)
        return tape.heads_to_rows(y)

    def steps(self, x: Sym, module: str, steps: tuple[str, ...]) -> Sym:
        """A small module's forward as ``MemorySpec`` steps: its linears by name, "tanh", "dropout" (head dropout)."""
        for step in steps:
            if step == "tanh":
                x = self.tape.act(x, "tanh")
            elif step == "dropout":
                x = self.tape.dropout(x, head_dropout(self.c))
            else:
                x = self.proj(x, f"{module}.{step}")
        return x


def _mask_numel(ctx: _Ctx, padded: bool, causal: bool, local: bool) -> int:
    """Elements of the boolean mask ``attention.build_mask`` passes to SDPA (0 for None)."""
    B, T = ctx.B, ctx.T
    if padded:
        return B * T * T if (causal or local) else B * T
    return T * T if local else 0


def _block(ctx: _Ctx, prefix: str, x: Sym, mask: int, rope: tuple[Sym, Sym] | None) -> Sym:
    """One block: attention and MLP sub-layers, pre-norm (``x + f(norm(x))``) or post-norm (``norm(x + f(x))``)."""
    tape, c, spec = ctx.tape, ctx.c, ctx.spec
    h = x if spec.post_norm else ctx.norm(x)
    a = ctx.dropout(_attention(ctx, prefix, h, mask, rope), c.hidden_dropout)
    x = ctx.norm(tape.add(a, x)) if spec.post_norm else tape.add(x, a)
    h = x if spec.post_norm else ctx.norm(x)
    m = ctx.dropout(_mlp(ctx, prefix, h), c.hidden_dropout)
    return ctx.norm(tape.add(m, x)) if spec.post_norm else tape.add(x, m)


def _attention(ctx: _Ctx, prefix: str, h: Sym, mask: int, rope: tuple[Sym, Sym] | None) -> Sym:
    tape, spec = ctx.tape, ctx.spec
    if len(spec.attention) == 1:  # one fused projection: q, k, v are views of its (B, T, 3C) output
        q = k = v = ctx.proj(h, f"{prefix}.{spec.attention[0]}")
    else:
        q, k, v = (ctx.proj(h, f"{prefix}.{name}") for name in spec.attention)
    if rope is not None:  # q·cos + rotate_half(q)·sin: keeps cos and sin
        cos, sin = rope
        q = tape.add(tape.mul(q, cos), tape.mul(q, sin))
        k = tape.add(tape.mul(k, cos), tape.mul(k, sin))
    if spec.attention_fp32:
        q, k, v = (tape.cast(t, FP32) for t in (q, k, v))
    y = ctx.attention(q, k, v, mask)
    if spec.attention_fp32:  # back to the input's dtype (fp32 under autocast: it follows a LayerNorm)
        y = tape.cast(y, tape.param_itemsize if not tape.autocast else FP32)
    return ctx.proj(y, f"{prefix}.{ctx.sites['attention']}")


def _mlp(ctx: _Ctx, prefix: str, h: Sym) -> Sym:
    tape, c, names = ctx.tape, ctx.c, ctx.spec.mlp
    if len(names) == 2:  # SwiGLU: down(act(gate(x)) * up(x))
        g = tape.act(ctx.proj(h, f"{prefix}.{names[0]}"), c.hidden_act)
        u = tape.mul(g, ctx.proj(h, f"{prefix}.{names[1]}"))
    else:
        u = tape.act(ctx.proj(h, f"{prefix}.{names[0]}"), c.hidden_act)
    return ctx.proj(u, f"{prefix}.{ctx.sites['ffn']}")


def _embeddings(ctx: _Ctx, T0: int) -> Sym:
    """Word (+ position, token-type) embeddings, the soft prompt and the embeddings' norm/dropout."""
    tape, c, spec, B, T = ctx.tape, ctx.c, ctx.spec, ctx.B, ctx.T
    C, trains = c.hidden_size, ctx.facts.embedding_trains
    prompt = ctx.facts.prompt_length > 0
    x = tape.embedding(tape.new(B * T0, INT64, False), C, trains)
    if prompt:  # PromptModel: cat([x[:, :k], prompt, x[:, k:]]) → (B, T0 + n, C), needs grad
        x = tape.new(B * T * C, x.itemsize, True)
    if spec.positions in ("learned", "learned-per-row"):
        # RoBERTa counts (B, T) positions from input_ids; with inputs_embeds (the prompt) one (T,) row
        rows = B if (spec.positions == "learned-per-row" and not prompt) else 1
        x = tape.add(x, tape.embedding(tape.new(rows * T, INT64, False), C, trains))
    if spec.token_types:
        x = tape.add(x, tape.embedding(tape.new(B * T, INT64, False), C, trains))
    if spec.embedding_norm:
        w_rg, b_rg = ctx.facts.norm_trains
        x = tape.layer_norm(x, C, w_rg, b_rg)
    return ctx.dropout(x, c.embedding_dropout)


def _lm_head(ctx: _Ctx, x: Sym) -> tuple[int, int]:
    """Logits over the vocabulary (a causal-LM head, or a bare decoder's tied projection) and the LM loss."""
    tape, c, B, V = ctx.tape, ctx.c, ctx.B, ctx.c.vocab_size
    facts = ctx.facts
    lin = facts.linears[facts.head] if facts.head else None  # None: a bare decoder's tied projection
    w_rg = lin.weight_trains if lin else facts.embedding_trains
    copied = "" if lin and ctx.copies_nothing(lin) else "lm_head"
    logits = tape.linear(x, c.hidden_size, V, w_rg, weight=copied)  # (B, T, V)
    tape.group = "logits"
    if facts.prompt_length:  # PromptModel drops the virtual positions: a (B, T0, V) copy
        logits = tape.new(B * (ctx.T - facts.prompt_length) * V, logits.itemsize, logits.rg)
    if ctx.head == "causal-lm":
        T0 = logits.numel // (B * V)
        flat = tape.new(B * (T0 - 1) * V, FP32, logits.rg)  # .float(), [:, :-1].flatten(0, 1) copy
        if flat.rg:
            tape.save_new(flat.numel, FP32)  # log_softmax output
            tape.save_new(B * (T0 - 1), INT64)  # shifted targets
            tape.save_new(1, FP32)  # total weight
    return tape.total("head"), tape.total("logits")


def _pool(ctx: _Ctx, x: Sym, padded: bool, pooling: str) -> Sym:
    """``heads.pool``: the pooler, the first or the last real token, or every token."""
    tape, B, C = ctx.tape, ctx.B, ctx.c.hidden_size
    if pooling == "tokens":
        return x
    if pooling == "last" and padded:  # advanced indexing: a new (B, C) tensor, and the index tensors kept
        if x.rg:
            tape.save_new(B, INT64)
            tape.save_new(B, INT64)
        return tape.new(B * C, x.itemsize, x.rg)
    pooled = x.view(B * C)  # hidden[:, 0] or hidden[:, -1]
    if pooling == "pooler":
        pooled = ctx.steps(pooled, ctx.facts.pooler, ctx.spec.pooler)
    return pooled


def _head(ctx: _Ctx, x: Sym, padded: bool) -> tuple[int, int]:
    """Final norm, pooling, head and loss; returns (head bytes, logits bytes) saved."""
    tape, c, B, head, facts = ctx.tape, ctx.c, ctx.B, ctx.head, ctx.facts
    tape.group = "head"
    if not ctx.spec.post_norm:
        x = ctx.norm(x)
    if head == "causal-lm" or (head is None and ctx.family.is_decoder):
        return _lm_head(ctx, x)
    if head is None:  # bare encoder: hidden states are the output
        return tape.total("head"), 0
    spec = ctx.family.heads[head]
    x = _pool(ctx, x, padded, spec.pooling)
    if spec.dropout:
        x = tape.dropout(x, head_dropout(c))
    steps = ctx.spec.head_steps.get(head)
    out = ctx.steps(x, facts.head, steps) if steps else ctx.proj(x, facts.head)
    L = facts.linears[f"{facts.head}.{steps[-1]}" if steps else facts.head].out_f
    if head == "token-classification" and facts.prompt_length:  # PromptModel drops the virtual positions
        out = tape.new(B * (ctx.T - facts.prompt_length) * L, out.itemsize, out.rg)
    out = tape.cast(out, FP32)
    if out.rg:
        if head == "regression":  # mse_loss keeps input and target
            tape.save(out)
            tape.save_new(B, FP32)
        else:
            tape.save_new(out.numel, FP32)  # log_softmax output
            tape.save_new(out.numel // L, INT64)  # targets (flattened)
            tape.save_new(1, FP32)
    return tape.total("head"), 0


def trace_activations(config: ModelConfig, method: Method, batch: Batch, head: str | None = None, *,
                      device: str = "cuda", autocast: bool = False, param_itemsize: int = FP32,
                      attention: str = "sdpa", grad_checkpointing: bool = False,
                      quantize: NF4Config | None = None, frozen_cast: bool = True) -> Activations:
    """Bytes autograd keeps for backward in one training forward of ``config`` (+ the loss).

    Args:
        config: the model's ``ModelConfig``.
        method: fine-tuning method (``minift.peft.config.Method``; what trains decides what is kept).
        batch: batch size, sequence length, padding.
        head: ``None`` | ``"classification"`` | ``"regression"`` | ``"token-classification"`` | ``"causal-lm"``.
        device: ``"cuda"`` or ``"cpu"``.
        autocast: mixed precision (weights fp32, matmuls in bf16/fp16).
        param_itemsize: 4 (fp32 weights) or 2 (pure bf16 weights).
        attention: ``"sdpa"`` (fused kernel) or ``"eager"`` (math: keeps T×T probabilities).
        grad_checkpointing: blocks keep only their inputs; one block is recomputed at a time in backward.
        quantize: the block linears are 4-bit (``minift.quant.NF4Config``): they keep nothing for backward, as a
            frozen linear, and autocast makes no copy of their weights.
        frozen_cast: under autocast, the frozen linear weights ``minift.train`` stores in the autocast dtype
            (``minift.precision.frozen_in_compute_dtype``; one process or DDP) get no autocast copy; False: every
            weight is fp32 and copied, as an uncast model (FSDP's gathered units copy nothing either way).

    Returns:
        ``Activations`` (bytes).
    """
    memory_spec(config)
    facts = model_facts(config, head, method, quantize)
    B, T0 = batch.batch_size, batch.seq_len
    T = T0 + facts.prompt_length
    tape = Tape(device=device, autocast=autocast, attention=attention, param_itemsize=param_itemsize)
    ctx = _Ctx(tape, config, facts, B, T, head, frozen_cast)
    x = _embeddings(ctx, T0)
    embeddings = tape.total("embeddings")
    rope = None
    if ctx.spec.positions == "rotary":  # (T, hs) cos and sin in the activations' dtype, shared by every block
        rope = tuple(tape.new(T * config.head_dim, param_itemsize, False) for _ in range(2))
    kinds = config.attention_layers or ["global"] * config.num_layers
    per_layer, block_inputs, shared_kept, masks_kept = [], 0, set(), set()
    for i, prefix in enumerate(facts.blocks):
        tape.group = f"layer {i}"
        tape.layer_groups.append(tape.group)
        before = tape.total()
        if grad_checkpointing and x.key not in shared_kept:
            block_inputs += x.nbytes  # the checkpoint keeps the block's input (the previous block's output)
            shared_kept.add(x.key)
        local = kinds[i] == "local"
        mask = _mask_numel(ctx, batch.padded, ctx.family.is_decoder, local)
        if grad_checkpointing and mask and local not in masks_kept:
            block_inputs += mask  # the boolean mask is a block argument too (one per attention kind)
            masks_kept.add(local)
        x = _block(ctx, prefix, x, mask, rope)
        per_layer.append(tape.total() - before)
    if grad_checkpointing and rope is not None and x.rg:
        block_inputs += rope[0].nbytes + rope[1].nbytes  # cos/sin are block arguments, kept with the inputs
    head_bytes, logits = _head(ctx, x, batch.padded)
    return Activations(embeddings=embeddings, per_layer=per_layer, head=head_bytes, logits=logits,
                       block_inputs=block_inputs, checkpointed=grad_checkpointing,
                       largest_layer=max(per_layer, default=0), **_copies(tape, grad_checkpointing))


def _copies(tape: Tape, checkpointed: bool) -> dict[str, int]:
    """Autocast weight copies: all are kept for backward, except inside checkpointed blocks, whose copies are
    dropped with the rest of the block and made again when the block is recomputed (one block at a time)."""
    per_layer: dict[str, int] = {}
    outside = cached = 0
    for name, (nbytes, trains) in tape.weight_copies.items():
        if name.startswith("layer "):
            layer = name.split(".", 1)[0]
            per_layer[layer] = per_layer.get(layer, 0) + nbytes
            cached += nbytes if trains else 0
        else:
            outside += nbytes
    layers = [per_layer.get(f"layer {i}", 0) for i in range(len(tape.layer_groups))]
    if not checkpointed:
        return {"weight_copies": outside + sum(layers), "copies_per_layer": layers}
    return {"weight_copies": outside, "layer_copies": max(layers, default=0), "cached_copies": cached,
            "copies_per_layer": [0] * len(layers)}
