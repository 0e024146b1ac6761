"""A symbolic autograd tape: which tensors a training forward keeps for backward, and how many bytes.

The activation term of the estimator is computed by "running" a model's forward on symbolic tensors that
carry only a size, an element size and whether they require grad. Each operation saves exactly what
PyTorch's autograd formula for it saves (``tools/autograd/derivatives.yaml``), *conditioned on which inputs
need a gradient* — since PyTorch 2.x a ``Linear`` whose weight is frozen does not keep its input, which is
why LoRA on q/v still stores less than full fine-tuning. Tensors are identified by storage, so a tensor
saved by two operations (``x`` feeding q, k and v) or a view of it counts once — the way the allocator sees it.

This follows Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
(https://arxiv.org/abs/2205.05198, section 4.1), which counts the same saved tensors by hand for one GPT
layer (34·sbh + 5·as²b bytes in fp16); the tape does that count per operation for each of our families,
attention kernels, precisions and PEFT methods instead of one closed formula.

Device rules that change byte counts (checked against ``torch.autograd.graph.saved_tensors_hooks``):
- dropout keeps a ``bool`` mask: ``native_dropout`` on CUDA, ``minift.models.dropout`` on the CPU;
- fused SDPA (flash / memory-efficient / CPU flash) keeps q, k, v, the output and a fp32 log-sum-exp, plus the
  float copy of a boolean mask; PyTorch's math SDPA ("eager") keeps the ``T×T`` probabilities instead, and on
  CPU with attention dropout ``minift.models.attention.attention_with_dropout`` computes the same math path in
  fp32 (its own bool dropout mask);
- under autocast a ``Linear`` casts its input to bf16/fp16 (a new tensor each call) and LayerNorm, softmax,
  ``log_softmax`` and ``pow``/``rsqrt`` run in fp32.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

FP32, HALF, INT64, BOOL = 4, 2, 8, 1


@dataclass(frozen=True)
class Sym:
    """A symbolic tensor: ``numel`` elements of ``itemsize`` bytes living in storage ``key`` of ``nbytes``."""

    key: int
    numel: int
    itemsize: int
    rg: bool  # requires grad
    nbytes: int  # bytes of the whole storage (a view keeps the whole storage alive)
    fused: bool = False  # output of a fused attention kernel, laid out (B, T, H, d)

    def view(self, numel: int) -> Sym:
        """A view of this tensor with ``numel`` elements (same storage)."""
        return Sym(self.key, numel, self.itemsize, self.rg, self.nbytes)


@dataclass
class Tape:
    """Records saved tensors; ``group`` labels where they are saved (``"embeddings"``, ``"layer 3"``, ``"head"``).

    Args:
        device: ``"cuda"`` or ``"cpu"`` (dropout masks and the CPU SDPA fallback differ).
        autocast: whether the forward runs under ``torch.autocast`` (bf16/fp16 matmuls).
        attention: ``"sdpa"`` (a fused kernel) or ``"eager"`` (PyTorch's math SDPA: T×T probabilities).
        training: dropout active.
        param_itemsize: bytes per weight element (4 fp32 / mixed, 2 pure bf16).
    """

    device: str = "cuda"
    autocast: bool = False
    attention: str = "sdpa"
    training: bool = True
    param_itemsize: int = FP32  # element size of the weights (embedding outputs)
    group: str = "embeddings"
    saved: dict[int, tuple[int, str]] = field(default_factory=dict)  # storage key → (bytes, group)
    # autocast bf16 copies kept for backward: "group.weight" → (bytes, whether the weight trains)
    weight_copies: dict[str, tuple[int, bool]] = field(default_factory=dict)
    layer_groups: list[str] = field(default_factory=list)  # the "layer i" groups, in order
    _ids: itertools.count = field(default_factory=itertools.count, repr=False)

    # --- tensors ---------------------------------------------------------------------------------------------
    def new(self, numel: int, itemsize: int, rg: bool) -> Sym:
        """A freshly allocated tensor."""
        return Sym(next(self._ids), int(numel), itemsize, bool(rg), int(numel) * itemsize)

    def save(self, x: Sym) -> None:
        """Autograd keeps ``x`` (its whole storage) for backward."""
        self.saved.setdefault(x.key, (x.nbytes, self.group))

    def save_new(self, numel: int, itemsize: int) -> None:
        """Autograd keeps a tensor created inside an op (a dropout mask, a log-sum-exp)."""
        self.save(self.new(numel, itemsize, False))

    def cast(self, x: Sym, itemsize: int) -> Sym:
        """``x.to(dtype)``: a copy unless the element size already matches (no saved tensors)."""
        return x if x.itemsize == itemsize else self.new(x.numel, itemsize, x.rg)

    def total(self, group_prefix: str | None = None) -> int:
        return sum(b for b, g in self.saved.values() if group_prefix is None or g.startswith(group_prefix))

    # --- operations ------------------------------------------------------------------------------------------
    def linear(self, x: Sym, in_f: int, out_f: int, w_rg: bool, b_rg: bool = False, weight: str = "") -> Sym:
        """``F.linear``: keeps the input when the weight needs a gradient (and the weight when x does)."""
        if self.autocast:
            x = self.cast(x, HALF)
            if x.rg and weight:  # the bf16 weight copy autograd keeps for grad-input
                self.weight_copies.setdefault(f"{self.group}.{weight}", (in_f * out_f * HALF, w_rg))
        if w_rg:
            self.save(x)
        return self.new(x.numel // in_f * out_f, x.itemsize, x.rg or w_rg or b_rg)

    def layer_norm(self, x: Sym, width: int, w_rg: bool, b_rg: bool) -> Sym:
        """``F.layer_norm``: keeps the input and mean / rstd (``numel / width`` each)."""
        if self.autocast:
            x = self.cast(x, FP32)
        out = self.new(x.numel, x.itemsize, x.rg or w_rg or b_rg)
        if out.rg:  # native_layer_norm keeps them even when only the bias needs a gradient
            self.save(x)
            stat = FP32 if self.device == "cuda" else x.itemsize  # CUDA accumulates in fp32, CPU in x's dtype
            self.save_new(x.numel // width, stat)
            self.save_new(x.numel // width, stat)
        return out

    def rms_norm(self, x: Sym, width: int, w_rg: bool) -> Sym:
        """minift's ``LlamaRMSNorm``: ``w * (x32 * rsqrt(mean(x32²) + eps)).to(dtype)``."""
        dtype = x.itemsize
        x32 = self.cast(x, FP32)
        if x32.rg:
            self.save(x32)  # pow(2) and the product with rsqrt
            self.save_new(x32.numel // width, FP32)  # rsqrt's output, (B, T, 1)
        y = self.cast(self.new(x32.numel, FP32, x32.rg), dtype)
        if w_rg:
            self.save(y)
        return self.new(y.numel, dtype, y.rg or w_rg)

    def act(self, x: Sym, kind: str) -> Sym:
        """Element-wise activation; gelu/silu keep their input, relu/tanh their output."""
        out = self.new(x.numel, x.itemsize, x.rg)
        if x.rg:
            self.save(out if kind in ("relu", "tanh") else x)
        return out

    def dropout(self, x: Sym, p: float) -> Sym:
        """Dropout: identity when off; keeps a bool mask (``native_dropout`` on CUDA, minift's on the CPU)."""
        if not self.training or p <= 0:
            return x
        if x.rg:
            self.save_new(x.numel, BOOL)
        return self.new(x.numel, x.itemsize, x.rg)

    def mul(self, a: Sym, b: Sym) -> Sym:
        """Tensor product: each operand is kept when the other needs a gradient."""
        if b.rg:
            self.save(a)
        if a.rg:
            self.save(b)
        return self.new(max(a.numel, b.numel), max(a.itemsize, b.itemsize), a.rg or b.rg)

    def add(self, a: Sym, b: Sym) -> Sym:
        return self.new(max(a.numel, b.numel), max(a.itemsize, b.itemsize), a.rg or b.rg)

    def embedding(self, ids: Sym, width: int, w_rg: bool) -> Sym:
        """``nn.Embedding``: keeps the index tensor when the table trains. Output in fp32/param dtype."""
        if w_rg:
            self.save(ids)
        return self.new(ids.numel * width, self.param_itemsize, w_rg)

    def sdpa(self, q: Sym, k: Sym, v: Sym, B: int, H: int, T: int, d: int, mask_numel: int, dropout_p: float) -> Sym:
        """``F.scaled_dot_product_attention`` on ``(B, H, T, d)`` q/k/v (views allowed); returns the output view.

        ``mask_numel``: elements of the boolean mask passed (0: none, the causal flag or no mask).
        """
        if self.autocast:
            q, k, v = self.cast(q, HALF), self.cast(k, HALF), self.cast(v, HALF)
        rg = q.rg or k.rg or v.rg
        dtype = q.itemsize
        math_path = self.attention == "eager" or (self.device == "cpu" and self.training and dropout_p > 0)
        if not rg:
            return self.new(B * H * T * d, dtype, False)
        if math_path:
            # The math kernel computes in fp32 (bf16/fp16 inputs are upcast). q·sqrt(scale) and k·sqrt(scale) are
            # new tensors kept by the QKᵀ matmul (each for the other's gradient); softmax keeps its output;
            # dropout keeps a mask and the PV matmul keeps the dropped probabilities (for v's gradient) and v
            # (for the probabilities' gradient).
            if k.rg:
                self.save_new(B * H * T * d, FP32)
            if q.rg:
                self.save_new(B * H * T * d, FP32)
            probs = self.new(B * H * T * T, FP32, q.rg or k.rg)
            if probs.rg:
                self.save(probs)
            if self.training and dropout_p > 0 and probs.rg:
                self.save_new(B * H * T * T, BOOL)
                probs = self.new(B * H * T * T, FP32, True)
            if v.rg:
                self.save(probs)
            if probs.rg:  # v as (B·H, T, d): the transposed (B, H, T, d) view is copied by the reshape
                self.save_new(B * H * T * d, FP32)
            return self.new(B * H * T * d, dtype, True)  # (B, H, T, d) contiguous: a reshape copies it
        for t in (q, k, v):
            self.save(t)
        if mask_numel:
            if self.device == "cuda":  # memory-efficient kernel: float bias, last dim padded to 16
                mask_numel = mask_numel // T * (math.ceil(T / 16) * 16)
            self.save_new(mask_numel, dtype)
        lse_T = T if self.device == "cpu" or (dtype == HALF and not mask_numel) else math.ceil(T / 32) * 32
        self.save_new(B * H * lse_T, FP32)
        out = self.new(B * H * T * d, dtype, True)
        self.save(out)
        return Sym(out.key, out.numel, out.itemsize, True, out.nbytes, fused=True)

    def heads_to_rows(self, y: Sym) -> Sym:
        """``y.transpose(1, 2).reshape(B, T, H*d)``: a view of a fused kernel's output, else a copy."""
        return y if y.fused else self.new(y.numel, y.itemsize, y.rg)
