"""The data model: an :class:`Example` (or, for instruction tuning, a :class:`Conversation`) and a :class:`Task`
(splits, label names, metrics, kind), plus the seeded splitting and few-shot sampling every reader shares."""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

KINDS = ("classification", "regression", "token-classification", "causal-lm", "sft")
# Kinds trained with the next-token loss of a causal-LM head: causal-LM classification (prompt -> label word) and
# instruction tuning (conversation -> assistant turns).
LM_KINDS = ("causal-lm", "sft")
IGNORE_INDEX = -100  # the label of positions without a loss (torch's cross-entropy ignore_index)
ROLES = ("system", "user", "assistant")  # the roles of a conversation's messages (OpenAI's chat format)

# Metric names per task kind; the first is the main metric unless a task says otherwise.
CLASSIFICATION_METRICS = ("accuracy", "micro_f1", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearman", "mse")
NER_METRICS = ("f1", "precision", "recall", "token_accuracy")
SFT_METRICS = ("response_loss", "perplexity")  # per assistant token on held-out conversations; lower is better


@dataclass(frozen=True)
class Example:
    """One labelled example.

    ``text`` (and ``text_pair`` for sentence pairs) for sequence tasks; for token classification ``words``
    holds the words and ``label`` one tag id per word. ``label`` is a class id (classification, causal-LM),
    a float (regression) or a tuple of tag ids (token classification).
    """

    text: str  # the first (or only) text; for token classification the words joined by spaces
    label: int | float | tuple[int, ...]  # class id, regression target, or tag id per word
    text_pair: str | None = None  # the second text of a sentence pair (aspect sentiment: the sentence)
    words: tuple[str, ...] | None = None  # token classification: the words
    id: str = ""  # where the example came from (file:line or the data set's id)


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str  # one of ROLES
    content: str  # the turn's text (non-empty)


@dataclass(frozen=True)
class Conversation:
    """One instruction-tuning example: messages ending with an assistant turn (the loss is on assistant turns)."""

    messages: tuple[Message, ...]  # an optional system message first, the last one from the assistant
    id: str = ""  # where it came from (file:line)

    def as_dicts(self) -> list[dict]:
        """The messages as ``[{"role": ..., "content": ...}, ...]``, what chat templates read."""
        return [{"role": m.role, "content": m.content} for m in self.messages]


# Metrics where lower is better (every other metric: higher), the one home of a metric's direction: the errors and
# losses among the metrics minift computes; any "*_loss" too.
LOWER_IS_BETTER = ("mse", "mae", "rmse", "loss", "val_loss", "response_loss", "perplexity")


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.endswith("_loss")


@dataclass
class Task:
    """A task: named splits of examples plus what a model and the metrics need to know about them."""

    name: str  # canonical task name (aliases resolve to it)
    kind: str  # one of KINDS
    splits: dict[str, Sequence[Example]]  # "train", optionally "dev", and "test" (SFT: Conversations)
    label_names: list[str]  # class / tag names in id order; empty for regression and SFT
    metric_names: list[str]  # the names compute_metrics returns, main metric first
    main_metric: str  # the metric to select checkpoints on
    description: str = ""  # how the splits were built (sources, seeds, sizes)
    prompt: str | None = None  # causal-LM: template with "{text}" (and "{text_pair}"); the label word follows
    label_words: list[str] = field(default_factory=list)  # causal-LM: the word generated for each class id

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.main_metric not in self.metric_names:
            raise ValueError(f"task {self.name!r}: main metric {self.main_metric!r} not in {self.metric_names}")
        if self.kind == "causal-lm" and (self.prompt is None or len(self.label_words) != len(self.label_names)):
            raise ValueError(f"task {self.name!r}: a causal-lm task needs a prompt and one label word per class")

    @property
    def greater_is_better(self) -> bool:
        """Whether a higher main metric is better (False for a loss or an error: ``lower_is_better``)."""
        return not lower_is_better(self.main_metric)

    def better(self, value: float, best: float | None) -> bool:
        """Whether main-metric ``value`` improves on ``best`` (None: nothing yet), in the task's direction."""
        if best is None:
            return True
        return value > best if self.greater_is_better else value < best

    @property
    def num_labels(self) -> int:
        """Output size of the head: 1 for regression, else the number of classes / tags."""
        return 1 if self.kind == "regression" else len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    def label_counts(self, split: str) -> dict[str, int]:
        """Examples per label name in a split (tags per name for token classification)."""
        if self.kind in ("regression", "sft"):
            raise ValueError(f"task {self.name!r} is a {self.kind} task: it has no labels to count")
        counts: Counter = Counter()
        for ex in self.splits[split]:
            ids = ex.label if isinstance(ex.label, tuple) else (ex.label,)
            counts.update(self.label_names[i] for i in ids)
        return dict(counts)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"Task({self.name!r}, kind={self.kind!r}, num_labels={self.num_labels}, {sizes})"


def seeded_split(items: Sequence, fraction: float, seed: int) -> tuple[list, list]:
    """Shuffle ``items`` with ``random.Random(seed)`` and cut it into (1 - fraction, fraction) parts.

    ``random.Random`` with an int seed gives the same permutation on every Python 3 version and platform.
    The second part has ``round(len(items) * fraction)`` items.
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_second = round(len(items) * fraction)
    first, second = order[: len(items) - n_second], order[len(items) - n_second:]
    return [items[i] for i in sorted(first)], [items[i] for i in sorted(second)]


def few_shot_sample(examples: Sequence[Example], per_class: int, seed: int) -> list[Example]:
    """A fixed sample of ``per_class`` examples of every class (all of a class when it has fewer),
    drawn with ``random.Random(seed)``, in the original order."""
    by_class: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        by_class.setdefault(ex.label, []).append(i)
    rng = random.Random(seed)
    chosen: list[int] = []
    for label in sorted(by_class):
        indices = by_class[label]
        chosen.extend(rng.sample(indices, min(per_class, len(indices))))
    return [examples[i] for i in sorted(chosen)]
