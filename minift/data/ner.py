"""Entity-level NER scores over IOB2 tags, as seqeval computes them in its default (non-strict) mode.

An entity is a maximal run of tags of one type that starts at ``B-X``, or at ``I-X`` after ``O`` or after
another type (seqeval's lenient reading of ill-formed IOB2). A predicted entity is correct only when its type,
first word and last word all equal a gold entity's (exact span match). Scores are micro-averaged over
all entities (CoNLL-2000 ``conlleval``; seqeval's ``f1_score`` default).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def _split(tag: str) -> tuple[str, str | None]:
    if tag == "O":
        return "O", None
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in ("B", "I") or not kind:
        raise ValueError(f"tag {tag!r} is not IOB2: expected 'O', 'B-TYPE' or 'I-TYPE'")
    return prefix, kind


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one sentence as ``(type, first word, last word)``, inclusive."""
    found, start, current = [], None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = _split(tag)
        if start is not None and (prefix != "I" or kind != current):
            found.append((current, start, i - 1))
            start = None
        if prefix in ("B", "I") and start is None:
            start, current = i, kind
    return found


def ner_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level micro precision / recall / F1 and word-level tag accuracy.

    Args:
        gold: per sentence, the gold IOB2 tag of each word.
        predicted: per sentence, the predicted tag of each word (same lengths as ``gold``).

    Returns:
        ``{"precision", "recall", "f1", "token_accuracy"}``; precision (recall) is 0 when nothing is
        predicted (gold), as seqeval does.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    correct = n_pred = n_gold = words = right = 0
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted tags")
        gold_entities, pred_entities = set(entities(g)), set(entities(p))
        correct += len(gold_entities & pred_entities)
        n_pred += len(pred_entities)
        n_gold += len(gold_entities)
        words += len(g)
        right += sum(a == b for a, b in zip(g, p))
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "token_accuracy": right / words if words else 0.0}


def ner_report(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
    """Per entity type: precision, recall, F1 and support (the number of gold entities)."""
    correct, n_pred, n_gold = Counter(), Counter(), Counter()
    for g, p in zip(gold, predicted):
        gold_entities, pred_entities = set(entities(g)), set(entities(p))
        correct.update(e[0] for e in gold_entities & pred_entities)
        n_pred.update(e[0] for e in pred_entities)
        n_gold.update(e[0] for e in gold_entities)
    report = {}
    for kind in sorted(set(n_gold) | set(n_pred)):
        precision = correct[kind] / n_pred[kind] if n_pred[kind] else 0.0
        recall = correct[kind] / n_gold[kind] if n_gold[kind] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[kind] = {"precision": precision, "recall": recall, "f1": f1, "support": n_gold[kind]}
    return report
