"""One typed config per fine-tuning method, and ``Method``: a method with its config and whether the head trains.

These are the only definitions of the methods' options. ``minift.peft.apply`` takes them, ``minift.train``'s
``TrainConfig`` carries them (its ``--lora-r`` / ``--adapter-size`` / ``--prompt-length`` flags are these fields,
prefixed with the method's name), and ``minift.memory`` estimates from the same objects. A new option is added
here, once, and is checked here, once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Union

TRAINABLE_HEADS = ("classification", "regression", "token-classification")  # heads that train by default
PROMPT_INITS = ("random", "vocab", "text")
ADAPTER_PLACEMENTS = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}  # which adapter sites each uses
ADAPTER_ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
# Which biases train beside a LoRA / adapter (peft's ``bias``): none; every ``bias`` parameter of the model; or only
# those of the layers the method wraps (peft's "lora_only"; "adapter_only" is its analogue for adapters).
LORA_BIASES = ("none", "all", "lora_only")
ADAPTER_BIASES = ("none", "all", "adapter_only")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _names(value: Any, what: str) -> list[str] | None:
    """A list of module names from a list or a comma-separated string (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(t, str) and t for t in value):
        raise ValueError(f"{what} must be a non-empty list of module names, got {value!r}")
    return list(value)


@dataclass
class LoRAConfig:
    """LoRA (Hu et al., arXiv:2106.09685): a rank-``r`` update scaled by ``alpha / r`` beside frozen linears."""

    r: int = 8  # rank of the update
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA path's input
    targets: list[str] | None = None  # module names or dotted suffixes (e.g. query,value); None: the family's defaults
    bias: str = "none"  # none | all | lora_only: also train every bias of the model, or those of the LoRA layers

    def __post_init__(self):
        _positive_int("LoRA r", self.r)
        _choice("LoRA bias", self.bias, LORA_BIASES)
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be a positive number, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be a number in [0, 1), got {self.dropout!r}")
        self.dropout = float(self.dropout)
        self.targets = _names(self.targets, "LoRA targets")


@dataclass
class AdapterConfig:
    """Bottleneck adapters (Houlsby et al., arXiv:1902.00751; Pfeiffer et al., arXiv:2005.00247)."""

    size: int | None = None  # bottleneck width m; None: hidden_size // reduction_factor, or 64 without one
    reduction_factor: float | None = None  # m = hidden_size // reduction_factor (give size or this, not both)
    placement: str = "houlsby"  # houlsby: after the attention and the feed-forward outputs; pfeiffer: feed-forward
    activation: str = "relu"  # relu | gelu | tanh | silu
    bias: str = "none"  # none | all | adapter_only: also train every bias of the model, or those of the wrapped layers

    def __post_init__(self):
        _choice("adapter bias", self.bias, ADAPTER_BIASES)
        if self.size is not None and self.reduction_factor is not None:
            raise ValueError("give adapter size or reduction_factor, not both "
                             f"(got size={self.size!r}, reduction_factor={self.reduction_factor!r})")
        if self.size is not None:
            _positive_int("adapter size", self.size)
        if self.reduction_factor is not None:
            rf = self.reduction_factor
            if not isinstance(rf, (int, float)) or isinstance(rf, bool) or rf <= 0:
                raise ValueError(f"adapter reduction_factor must be a positive number, got {rf!r}")
        if self.placement not in ADAPTER_PLACEMENTS:
            raise ValueError(f"unknown adapter placement {self.placement!r}; "
                             f"choose one of {sorted(ADAPTER_PLACEMENTS)}")
        if self.activation not in ADAPTER_ACTIVATIONS:
            raise ValueError(f"unknown adapter activation {self.activation!r}; choose one of {ADAPTER_ACTIVATIONS}")

    def bottleneck_size(self, hidden_size: int) -> int:
        """The bottleneck width ``m`` for hidden size ``C``."""
        if self.reduction_factor is None:
            return self.size if self.size is not None else 64
        m = int(hidden_size // self.reduction_factor)
        if m < 1:
            raise ValueError(f"reduction_factor={self.reduction_factor} leaves no bottleneck for hidden size "
                             f"{hidden_size}; use a smaller factor or a size")
        return m


@dataclass
class BitFitConfig:
    """BitFit (Ben Zaken et al., arXiv:2106.10199): train the bias terms only; no options."""


@dataclass
class PromptConfig:
    """Prompt tuning (Lester et al., arXiv:2104.08691): ``length`` trainable virtual-token embeddings."""

    length: int = 20  # number of virtual tokens (peft's num_virtual_tokens)
    init: str = "vocab"  # random (uniform ±0.5) | vocab (sampled token embeddings) | text (embeddings of `text`)
    text: str | None = None  # init=text: the text whose token embeddings start the prompt (tokenised by the caller)
    token_ids: list[int] | None = None  # init=text: the text's token ids (repeated or cut to `length`)

    def __post_init__(self):
        _positive_int("prompt length", self.length)
        if isinstance(self.init, str) and self.init.startswith("text:"):  # the old "text:<words>" spelling
            self.init, self.text = "text", self.init[len("text:"):].strip() or None
        if self.init not in PROMPT_INITS:
            raise ValueError(f"unknown prompt init {self.init!r}; choose one of {PROMPT_INITS}")
        if self.init == "text" and self.text is None and self.token_ids is None:
            raise ValueError("prompt init 'text' needs the text (--prompt-text 'classify the topic') or its token_ids")
        if self.init != "text" and (self.text is not None or self.token_ids is not None):
            raise ValueError(f"a prompt text / token_ids only make sense with init 'text', not {self.init!r}")
        if self.token_ids is not None:
            ids = self.token_ids
            if not ids or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise ValueError(f"prompt token_ids must be a non-empty list of ints, got {ids!r}")
            self.token_ids = list(ids)


MethodConfig = Union[LoRAConfig, AdapterConfig, BitFitConfig, PromptConfig]
METHOD_CONFIGS: dict[str, type] = {"lora": LoRAConfig, "adapter": AdapterConfig, "bitfit": BitFitConfig,
                                   "prompt": PromptConfig}
PEFT_METHODS = tuple(METHOD_CONFIGS)
METHODS = ("full", *PEFT_METHODS)


def method_config(method: str, options: dict | None = None) -> MethodConfig | None:
    """The typed config of ``method`` from keyword ``options`` (None for full fine-tuning).

    Raises:
        ValueError: an unknown method, or options the method does not have (the message lists its options).
    """
    if method not in METHODS:
        raise ValueError(f"unknown fine-tuning method {method!r}; choose one of {', '.join(METHODS)}")
    options = dict(options or {})
    if method == "full":
        if options:
            raise ValueError(f"full fine-tuning has no options, got {sorted(options)}")
        return None
    cls = METHOD_CONFIGS[method]
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; its options are {allowed}")
    return cls(**options)


@dataclass
class Method:
    """A fine-tuning method, its config and whether the task head trains: what ``apply`` does to a model, what a
    run trains and what the memory estimator counts.

    ``Method("lora", LoRAConfig(r=16))``; ``Method("full")``; ``config=None`` gives the method's defaults.
    """

    name: str = "full"  # full | lora | adapter | bitfit | prompt
    config: MethodConfig | None = None  # the method's options (LoRAConfig, ...); None: its defaults
    train_head: bool | None = None  # None: True for classification / regression / token heads (full: always)

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"unknown fine-tuning method {self.name!r}; choose one of {', '.join(METHODS)}")
        if self.config is None and self.name != "full":
            self.config = METHOD_CONFIGS[self.name]()
        if self.name == "full" and self.config is not None:
            raise ValueError("full fine-tuning takes no method config")
        if self.name != "full" and not isinstance(self.config, METHOD_CONFIGS[self.name]):
            raise TypeError(f"method {self.name!r} takes a {METHOD_CONFIGS[self.name].__name__}, "
                            f"got {type(self.config).__name__}")
        if self.train_head is not None and not isinstance(self.train_head, bool):
            raise TypeError(f"train_head must be True, False or None, got {self.train_head!r}")

    @classmethod
    def of(cls, name: str, train_head: bool | None = None, **options) -> Method:
        """``Method.of("lora", r=16)``: the method with its config built from keyword options."""
        return cls(name, method_config(name, options), train_head)

    @property
    def options(self) -> dict:
        """The config's fields as a plain dict (empty for full and BitFit)."""
        return asdict(self.config) if self.config is not None else {}

    def head_trains(self, head_kind: str | None) -> bool:
        """Whether the weights of a head of ``head_kind`` train under this method."""
        if head_kind is None:
            return False
        if self.name == "full":
            return True
        return head_kind in TRAINABLE_HEADS if self.train_head is None else self.train_head

    def label(self) -> str:
        """A short description, e.g. ``lora r=8 (q_proj,v_proj)``."""
        c = self.config
        bias = f" bias={c.bias}" if getattr(c, "bias", "none") != "none" else ""
        if isinstance(c, LoRAConfig):
            return f"lora r={c.r}" + (f" ({','.join(c.targets)})" if c.targets else "") + bias
        if isinstance(c, AdapterConfig):
            size = c.bottleneck_size(0) if c.reduction_factor is None else f"C/{c.reduction_factor:g}"
            return f"adapter m={size} ({c.placement})" + bias
        if isinstance(c, PromptConfig):
            return f"prompt n={c.length}"
        return self.name

    def to_dict(self) -> dict:
        """A JSON-able record: ``{"method", "options", "train_head"}``."""
        return {"method": self.name, "options": self.options, "train_head": self.train_head}

    @classmethod
    def from_dict(cls, d: dict) -> Method:
        """The inverse of :meth:`to_dict` (options checked as when given by hand)."""
        return cls.of(d["method"], d.get("train_head"), **(d.get("options") or {}))
