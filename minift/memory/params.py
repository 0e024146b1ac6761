"""Parameter counts from a ``ModelConfig``: the model's linears, norms and embeddings, and what a method trains.

The layout mirrors ``minift.models`` module by module (block-relative names are the HF keys, so LoRA targets
and adapter sites from ``minift.peft`` match them the way ``minift.peft.apply`` does), and the trainable set
mirrors ``minift.peft.apply``: PEFT parameters, the head for classification / regression / token heads,
every ``bias`` for BitFit. Counts are checked against models built on the meta device and against the
published sizes (``tests/memory/test_params.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

from minift.models.config import ModelConfig
from minift.peft.adapter import ADAPTER_SITES, PLACEMENTS
from minift.peft.apply import METHODS as PEFT_METHODS
from minift.peft.apply import TRAINABLE_HEADS
from minift.peft.lora import DEFAULT_TARGETS

METHODS = ("full", *PEFT_METHODS)


@dataclass(frozen=True)
class Method:
    """A fine-tuning method and its settings (defaults are ``minift.peft``'s)."""

    name: str = "full"  # one of METHODS
    lora_r: int = 8  # LoRA rank
    lora_targets: tuple[str, ...] | None = None  # module names or dotted suffixes; None → family defaults
    lora_dropout: float = 0.0  # dropout on the LoRA input (adds a mask and a copy of the input per target)
    adapter_size: int = 64  # bottleneck width m
    adapter_placement: str = "houlsby"  # "houlsby" (after attention and FFN) | "pfeiffer" (FFN only)
    adapter_activation: str = "relu"
    prompt_length: int = 20  # soft-prompt virtual tokens (they lengthen every sequence)
    train_head: bool | None = None  # None → True for classification/regression/token heads (full: always)

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; choose one of {', '.join(METHODS)}")
        for field_name in ("lora_r", "adapter_size", "prompt_length"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field_name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.adapter_placement not in PLACEMENTS:
            raise ValueError(f"unknown adapter placement {self.adapter_placement!r}; use {sorted(PLACEMENTS)}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.lora_dropout!r}")

    def label(self) -> str:
        """Short description, e.g. ``lora r=8 (q_proj,v_proj)``."""
        if self.name == "lora":
            return f"lora r={self.lora_r}" + (f" ({','.join(self.lora_targets)})" if self.lora_targets else "")
        if self.name == "adapter":
            return f"adapter m={self.adapter_size} ({self.adapter_placement})"
        if self.name == "prompt":
            return f"prompt n={self.prompt_length}"
        return self.name

    def targets(self, model_type: str) -> tuple[str, ...]:
        return tuple(self.lora_targets) if self.lora_targets else DEFAULT_TARGETS.get(model_type, ())

    def lora_on(self, model_type: str, name: str) -> bool:
        """Whether the block linear ``name`` gets LoRA (name equal to a target or ending in ``.target``)."""
        return self.name == "lora" and any(name == t or name.endswith("." + t) for t in self.targets(model_type))

    def adapter_on(self, model_type: str, name: str) -> bool:
        """Whether the block linear ``name`` is wrapped by an adapter."""
        if self.name != "adapter":
            return False
        return name in [ADAPTER_SITES[model_type][site] for site in PLACEMENTS[self.adapter_placement]]

    def head_trains(self, head: str | None) -> bool:
        if head is None:
            return False
        if self.name == "full":
            return True
        return head in TRAINABLE_HEADS if self.train_head is None else self.train_head

    def trains_weights(self) -> bool:
        return self.name == "full"

    def trains_biases(self) -> bool:
        return self.name in ("full", "bitfit")


@dataclass(frozen=True)
class Linear:
    """One ``nn.Linear`` of a block: block-relative HF name, in/out features, bias."""

    name: str
    in_f: int
    out_f: int
    bias: bool

    @property
    def numel(self) -> int:
        return self.in_f * self.out_f + (self.out_f if self.bias else 0)


def block_linears(c: ModelConfig) -> list[Linear]:
    """The linears of one block, in forward order."""
    C, F = c.hidden_size, c.intermediate_size
    t = c.model_type
    if t in ("bert", "roberta"):
        return [Linear("attention.self.query", C, C, True), Linear("attention.self.key", C, C, True),
                Linear("attention.self.value", C, C, True), Linear("attention.output.dense", C, C, True),
                Linear("intermediate.dense", C, F, True), Linear("output.dense", F, C, True)]
    if t == "gpt2":
        return [Linear("attn.c_attn", C, 3 * C, True), Linear("attn.c_proj", C, C, True),
                Linear("mlp.c_fc", C, F, True), Linear("mlp.c_proj", F, C, True)]
    if t == "gpt_neo":
        a = "attn.attention."
        return [Linear(a + "q_proj", C, C, False), Linear(a + "k_proj", C, C, False),
                Linear(a + "v_proj", C, C, False), Linear(a + "out_proj", C, C, True),
                Linear("mlp.c_fc", C, F, True), Linear("mlp.c_proj", F, C, True)]
    if t == "llama":
        q, kv, ab, mb = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.attention_bias, c.mlp_bias
        return [Linear("self_attn.q_proj", C, q, ab), Linear("self_attn.k_proj", C, kv, ab),
                Linear("self_attn.v_proj", C, kv, ab), Linear("self_attn.o_proj", q, C, ab),
                Linear("mlp.gate_proj", C, F, mb), Linear("mlp.up_proj", C, F, mb), Linear("mlp.down_proj", F, C, mb)]
    raise ValueError(f"unsupported model_type {t!r}")


def norms_per_block(c: ModelConfig) -> int:
    return 2


def norm_numel(c: ModelConfig) -> int:
    """Parameters of one norm: LayerNorm has weight and bias, RMSNorm a weight only."""
    return c.hidden_size if c.model_type == "llama" else 2 * c.hidden_size


def embedding_numel(c: ModelConfig) -> dict[str, int]:
    """Embedding tables (and the embeddings LayerNorm of the encoders)."""
    C = c.hidden_size
    tables = {"word": c.vocab_size * C}
    if c.model_type in ("bert", "roberta"):
        tables.update(position=c.max_position_embeddings * C, token_type=max(c.type_vocab_size, 1) * C, norm=2 * C)
    elif c.model_type in ("gpt2", "gpt_neo"):
        tables["position"] = c.max_position_embeddings * C
    return tables


def head_linears(c: ModelConfig, head: str | None) -> list[Linear]:
    """Linears after the blocks: pooler and head (a tied ``lm_head`` adds none)."""
    C, L = c.hidden_size, c.num_labels if head != "regression" else 1
    t = c.model_type
    out: list[Linear] = []
    if t == "bert" and head in (None, "classification", "regression"):
        out.append(Linear("pooler.dense", C, C, True))
    if t == "roberta" and head is None:
        out.append(Linear("pooler.dense", C, C, True))
    if head in ("classification", "regression"):
        if t == "bert":
            out.append(Linear("classifier", C, L, True))
        elif t == "roberta":
            out += [Linear("classifier.dense", C, C, True), Linear("classifier.out_proj", C, L, True)]
        else:
            out.append(Linear("score", C, L, False))
    elif head == "token-classification":
        out.append(Linear("classifier", C, L, True))
    elif head == "causal-lm" and not c.tie_word_embeddings:
        out.append(Linear("lm_head", C, c.vocab_size, False))
    return out


def final_norm_numel(c: ModelConfig) -> int:
    return 0 if c.model_type in ("bert", "roberta") else norm_numel(c)


def adapter_numel(c: ModelConfig, m: int) -> int:
    C = c.hidden_size
    return 2 * C * m + m + C


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts (elements)."""

    total: int  # every parameter, tied ones once, PEFT parameters included
    trainable: int  # what the optimizer updates
    base: int  # the model without PEFT parameters


def count_params(c: ModelConfig, head: str | None, method: Method) -> ParamCount:
    """Total, trainable and base parameter counts of ``c`` with ``head`` under ``method``."""
    L, t = c.num_layers, c.model_type
    linears, heads = block_linears(c), head_linears(c, head)
    block = sum(lin.numel for lin in linears) + norms_per_block(c) * norm_numel(c)
    base = sum(embedding_numel(c).values()) + L * block + final_norm_numel(c) + sum(h.numel for h in heads)
    backbone_heads = [h for h in heads if h.name.startswith("pooler")]
    task_heads = [h for h in heads if not h.name.startswith("pooler")]
    extra = 0
    if method.name == "lora":
        extra = L * sum(method.lora_r * (lin.in_f + lin.out_f) for lin in linears if method.lora_on(t, lin.name))
    elif method.name == "adapter":
        extra = L * len(PLACEMENTS[method.adapter_placement]) * adapter_numel(c, method.adapter_size)
    elif method.name == "prompt":
        extra = method.prompt_length * c.hidden_size
    if method.name == "full":
        trainable = base
    else:
        trainable = extra
        if method.head_trains(head):
            trainable += sum(h.numel for h in task_heads)
        if method.name == "bitfit":
            ln_bias = c.hidden_size if t != "llama" else 0
            biases = L * (sum(lin.out_f for lin in linears if lin.bias) + 2 * ln_bias)
            biases += sum(h.out_f for h in backbone_heads if h.bias)
            biases += ln_bias * (1 if t in ("bert", "roberta", "gpt2", "gpt_neo") else 0)  # embeddings LN / ln_f
            if not method.head_trains(head):
                biases += sum(h.out_f for h in task_heads if h.bias)
            trainable += biases
    return ParamCount(total=base + extra, trainable=trainable, base=base)
