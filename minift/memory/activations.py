"""Activation memory of one training forward, per family, method, precision and attention kernel.

Each ``_<family>_block`` below replays the matching ``forward`` of ``minift.models`` on a symbolic ``Tape``
(``tracer.py``) operation by operation, with the PEFT modules of ``minift.peft`` swapped in where the method
puts them. What the tape saves is what autograd keeps; ``tests/memory/test_saved.py`` checks it against the
bytes really saved by our models (``saved.py``) for every family and method.

Korthikanti et al. 2022 (https://arxiv.org/abs/2205.05198), eq. 2, count for one pre-LN GPT layer in fp16
with dropout: attention 11·sbh + 5·as²b, MLP 19·sbh, norms 4·sbh. With fused attention the 5·as²b term
(scores, softmax, dropout mask) is gone — the kernel keeps only q, k, v, the output and a log-sum-exp — and
the family differences show up as: BERT/RoBERTa post-LN keep the residual sums, Llama's SwiGLU keeps four
(B, T, F) tensors instead of two and its RMSNorm keeps an fp32 copy, GQA keys/values are repeated to all heads
before SDPA (so they are kept at full head count), and frozen linears keep no input.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from minift.memory.params import Linear, Method, block_linears
from minift.memory.tracer import FP32, INT64, Sym, Tape
from minift.models.config import ModelConfig


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


class _Ctx:
    """What a block recipe needs: the tape, the config, the method and the batch geometry."""

    def __init__(self, tape: Tape, config: ModelConfig, method: Method, B: int, T: int, head: str | None):
        self.tape, self.c, self.m, self.B, self.T, self.head = tape, config, method, B, T, head
        self.linears = {lin.name: lin for lin in block_linears(config)}

    def proj(self, x: Sym, name: str) -> Sym:
        """A block linear with whatever PEFT module the method swaps in (``LoRALinear`` / ``AdapterLinear``)."""
        tape, m, t = self.tape, self.m, self.c.model_type
        lin: Linear = self.linears[name]
        y = tape.linear(x, lin.in_f, lin.out_f, m.trains_weights(), lin.bias and m.trains_biases(), weight=name)
        if m.lora_on(t, name):
            h = tape.linear(tape.dropout(x, m.lora_dropout), lin.in_f, m.lora_r, True, weight=name + ".lora_A")
            z = tape.linear(h, m.lora_r, lin.out_f, True, weight=name + ".lora_B")  # (B, T, C_out)
            y = tape.add(y, z)
        if m.adapter_on(t, name):
            a = tape.linear(y, lin.out_f, m.adapter_size, True, True, weight=name + ".down")
            a = tape.act(a, m.adapter_activation)
            y = tape.add(y, tape.linear(a, m.adapter_size, lin.out_f, True, True, weight=name + ".up"))  # residual
        return y

    def norm(self, x: Sym) -> Sym:
        if self.c.model_type == "llama":
            return self.tape.rms_norm(x, self.c.hidden_size, self.m.trains_weights())
        return self.tape.layer_norm(x, self.c.hidden_size, self.m.trains_weights(), self.m.trains_biases())

    def attention(self, q: Sym, k: Sym, v: Sym, mask_numel: int) -> Sym:
        """``minift.models.attention.attention`` on (B, H, T, d) views; GQA k/v are repeated first."""
        c, tape = self.c, self.tape
        B, T, H, d = self.B, self.T, c.num_heads, c.head_dim
        if c.num_kv_heads != H:  # repeat_interleave: new full-head tensors (kept by SDPA instead of k, v)
            k = tape.new(B * H * T * d, k.itemsize, k.rg)
            v = tape.new(B * H * T * d, v.itemsize, v.rg)
        y = tape.sdpa(q, k, v, B, H, T, d, mask_numel, c.attention_dropout)
        return tape.heads_to_rows(y)


def _mask_numel(ctx: _Ctx, padded: bool, causal: bool, local: bool) -> int:
    """Elements of the boolean mask ``attention.build_mask`` passes to SDPA (0 for None)."""
    B, T = ctx.B, ctx.T
    if padded:
        return B * T * T if (causal or local) else B * T
    return T * T if local else 0


def _encoder_block(ctx: _Ctx, x: Sym, mask: int) -> Sym:
    tape, c = ctx.tape, ctx.c
    q, k, v = (ctx.proj(x, f"attention.self.{n}") for n in ("query", "key", "value"))
    y = ctx.attention(q, k, v, mask)
    a = tape.dropout(ctx.proj(y, "attention.output.dense"), c.hidden_dropout)
    x = ctx.norm(tape.add(a, x))
    h = tape.act(ctx.proj(x, "intermediate.dense"), c.hidden_act)
    o = tape.dropout(ctx.proj(h, "output.dense"), c.hidden_dropout)
    return ctx.norm(tape.add(o, x))


def _gpt_block(ctx: _Ctx, x: Sym, mask: int) -> Sym:
    tape, c = ctx.tape, ctx.c
    h = ctx.norm(x)
    if c.model_type == "gpt2":
        qkv = ctx.proj(h, "attn.c_attn")  # (B, T, 3C); q, k, v are views of it
        q = k = v = qkv
        a_out = "attn.c_proj"
    else:  # GPT-Neo: separate projections, attention in fp32
        q, k, v = (tape.cast(ctx.proj(h, f"attn.attention.{n}_proj"), FP32) for n in ("q", "k", "v"))
        a_out = "attn.attention.out_proj"
    y = ctx.attention(q, k, v, mask)
    if c.model_type == "gpt_neo":
        y = tape.cast(y, tape.param_itemsize if not tape.autocast else FP32)
    x = tape.add(x, tape.dropout(ctx.proj(y, a_out), c.hidden_dropout))
    h = tape.act(ctx.proj(ctx.norm(x), "mlp.c_fc"), c.hidden_act)
    return tape.add(x, tape.dropout(ctx.proj(h, "mlp.c_proj"), c.hidden_dropout))


def _llama_block(ctx: _Ctx, x: Sym, mask: int, cos: Sym, sin: Sym) -> Sym:
    tape, c = ctx.tape, ctx.c
    h = ctx.norm(x)
    q, k, v = (ctx.proj(h, f"self_attn.{n}_proj") for n in ("q", "k", "v"))
    q = tape.add(tape.mul(q, cos), tape.mul(q, sin))  # q·cos + rotate_half(q)·sin: keeps cos and sin
    k = tape.add(tape.mul(k, cos), tape.mul(k, sin))
    y = ctx.attention(q, k, v, mask)
    x = tape.add(x, ctx.proj(y, "self_attn.o_proj"))
    h = ctx.norm(x)
    g = tape.act(ctx.proj(h, "mlp.gate_proj"), c.hidden_act)
    return tape.add(x, ctx.proj(tape.mul(g, ctx.proj(h, "mlp.up_proj")), "mlp.down_proj"))


def _embeddings(ctx: _Ctx, T0: int) -> Sym:
    """Word (+ position, token-type) embeddings, the soft prompt and the embeddings' norm/dropout."""
    tape, c, m, B = ctx.tape, ctx.c, ctx.m, ctx.B
    C, full = c.hidden_size, m.trains_weights()
    ids = tape.new(B * T0, INT64, False)
    x = tape.embedding(ids, C, full)
    if m.name == "prompt":  # PromptModel: cat([x[:, :k], prompt, x[:, k:]]) → (B, T0 + n, C), needs grad
        x = tape.new(B * ctx.T * C, x.itemsize, True)
    if c.model_type in ("bert", "roberta"):
        pos_rows = B if (c.model_type == "roberta" and m.name != "prompt") else 1
        pe = tape.embedding(tape.new(pos_rows * ctx.T, INT64, False), C, full)
        te = tape.embedding(tape.new(B * ctx.T, INT64, False), C, full)
        x = tape.add(tape.add(x, pe), te)
        x = tape.dropout(tape.layer_norm(x, C, full, m.trains_biases()), c.embedding_dropout)
    elif c.model_type in ("gpt2", "gpt_neo"):
        x = tape.dropout(tape.add(x, tape.embedding(tape.new(ctx.T, INT64, False), C, full)), c.embedding_dropout)
    return x


def _head(ctx: _Ctx, x: Sym, padded: bool) -> tuple[int, int]:
    """Final norm, pooling, head and loss; returns (head bytes, logits bytes) saved."""
    tape, c, m, B, T = ctx.tape, ctx.c, ctx.m, ctx.B, ctx.T
    C, head, t = c.hidden_size, ctx.head, c.model_type
    head_w, head_b = m.head_trains(head), m.head_trains(head) or m.trains_biases()
    tape.group = "head"
    if t != "bert" and t != "roberta":
        x = ctx.norm(x)
    if head == "causal-lm" or (head is None and c.is_decoder):
        tied_w = m.trains_weights()
        logits = tape.linear(x, C, c.vocab_size, tied_w, weight="lm_head")  # (B, T, V)
        tape.group = "logits"
        if m.name == "prompt":  # PromptModel drops the virtual positions: a (B, T0, V) copy
            logits = tape.new(B * (T - m.prompt_length) * c.vocab_size, logits.itemsize, logits.rg)
        if head == "causal-lm":
            T0 = logits.numel // (B * c.vocab_size)
            flat = tape.new(B * (T0 - 1) * c.vocab_size, FP32, logits.rg)  # .float(), [:, :-1].flatten(0, 1) copy
            if flat.rg:
                tape.save_new(flat.numel, FP32)  # log_softmax output
                tape.save_new(B * (T0 - 1), INT64)  # shifted targets
                tape.save_new(1, FP32)  # total weight
        return tape.total("head"), tape.total("logits")
    L = c.num_labels if head != "regression" else 1
    if head in ("classification", "regression"):
        if t == "bert":
            pooled = x.view(B * C)  # hidden[:, 0]
            lin = tape.linear(pooled, C, C, m.trains_weights(), m.trains_biases(), weight="pooler.dense")
            pooled = tape.act(lin, "tanh")
            pooled = tape.dropout(pooled, _head_dropout(c))
            out = tape.linear(pooled, C, L, head_w, head_b, weight="classifier")
        elif t == "roberta":
            pooled = tape.dropout(x.view(B * C), _head_dropout(c))
            pooled = tape.act(tape.linear(pooled, C, C, head_w, head_b, weight="classifier.dense"), "tanh")
            out = tape.linear(tape.dropout(pooled, _head_dropout(c)), C, L, head_w, head_b, weight="out_proj")
        else:  # decoders: last real token (advanced indexing when padded: a new (B, C) tensor)
            pooled = tape.new(B * C, x.itemsize, x.rg) if padded else x.view(B * C)
            if padded and x.rg:
                tape.save_new(B, INT64)
                tape.save_new(B, INT64)
            out = tape.linear(pooled, C, L, head_w, False, weight="score")
    elif head == "token-classification":
        out = tape.linear(tape.dropout(x, _head_dropout(c)), C, L, head_w, head_b, weight="classifier")
        if m.name == "prompt":  # PromptModel drops the virtual positions: a (B, T0, L) copy
            out = tape.new(B * (T - m.prompt_length) * L, out.itemsize, out.rg)
    else:  # bare encoder: hidden states are the output
        return tape.total("head"), 0
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


def _head_dropout(c: ModelConfig) -> float:
    return c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout


def trace_activations(config: ModelConfig, method: Method, batch: Batch, head: str | None = None, *,
                      device: str = "cuda", autocast: bool = False, param_itemsize: int = FP32,
                      attention: str = "sdpa", grad_checkpointing: bool = False) -> Activations:
    """Bytes autograd keeps for backward in one training forward of ``config`` (+ the loss).

    Args:
        config: the model's ``ModelConfig``.
        method: fine-tuning method (what trains decides what is kept).
        batch: batch size, sequence length, padding.
        head: ``None`` | ``"classification"`` | ``"regression"`` | ``"token-classification"`` | ``"causal-lm"``.
        device: ``"cuda"`` or ``"cpu"``.
        autocast: mixed precision (weights fp32, matmuls in bf16/fp16).
        param_itemsize: 4 (fp32 weights) or 2 (pure bf16 weights).
        attention: ``"sdpa"`` (fused kernel) or ``"eager"`` (math: keeps T×T probabilities).
        grad_checkpointing: blocks keep only their inputs; one block is recomputed at a time in backward.

    Returns:
        ``Activations`` (bytes).
    """
    B, T0 = batch.batch_size, batch.seq_len
    T = T0 + (method.prompt_length if method.name == "prompt" else 0)
    tape = Tape(device=device, autocast=autocast, attention=attention, param_itemsize=param_itemsize)
    ctx = _Ctx(tape, config, method, B, T, head)
    padded = batch.padded
    x = _embeddings(ctx, T0)
    embeddings = tape.total("embeddings")
    cos = sin = None
    if config.model_type == "llama":
        cos = tape.new(T * config.head_dim, param_itemsize, False)  # (T, hs), shared by every layer
        sin = tape.new(T * config.head_dim, param_itemsize, False)
    per_layer, block_inputs, shared_kept, masks_kept = [], 0, set(), set()
    for i in range(config.num_layers):
        tape.group = f"layer {i}"
        tape.layer_groups.append(tape.group)
        before = tape.total()
        if grad_checkpointing and x.key not in shared_kept:
            block_inputs += x.nbytes  # the checkpoint keeps the block's input (the previous block's output)
            shared_kept.add(x.key)
        local = config.model_type == "gpt_neo" and (config.attention_layers or ["global"])[i] == "local"
        causal = config.is_decoder
        mask = _mask_numel(ctx, padded, causal, local)
        if grad_checkpointing and mask and local not in masks_kept:
            block_inputs += mask  # the boolean mask is a block argument too (one per attention kind)
            masks_kept.add(local)
        if config.model_type in ("bert", "roberta"):
            x = _encoder_block(ctx, x, mask)
        elif config.model_type == "llama":
            x = _llama_block(ctx, x, mask, cos, sin)
        else:
            x = _gpt_block(ctx, x, mask)
        per_layer.append(tape.total() - before)
    if grad_checkpointing and config.model_type == "llama" and x.rg:
        block_inputs += cos.nbytes + sin.nbytes  # cos/sin are block arguments, kept with the inputs
    head_bytes, logits = _head(ctx, x, padded)
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
