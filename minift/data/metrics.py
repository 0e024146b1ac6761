"""Task metrics: scikit-learn for classification, scipy for correlations, :mod:`minift.data.ner` for
entity-level NER scores. ``compute_metrics(task, predictions, labels)`` returns the task's metric names.

scikit-learn and scipy are imported on first use: together they take seconds to import, which every
``import minift.data`` would otherwise pay."""
from __future__ import annotations

import numpy as np

from minift.data.example import IGNORE_INDEX, Task
from minift.data.ner import ner_scores


def _array(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().float().cpu().numpy() if values.is_floating_point() else values.cpu().numpy()
    return np.asarray(values)


def classification_metrics(predictions, labels, num_labels: int) -> dict[str, float]:
    """accuracy, micro-F1, macro-F1 (over all ``num_labels`` classes), Matthews correlation, binary F1.

    ``predictions`` are class ids (N,) or logits (N, C); a prediction of -1 (an unparseable causal-LM
    answer) is always wrong.
    """
    from sklearn import metrics as skm

    y_pred, y_true = _array(predictions), _array(labels).astype(np.int64).reshape(-1)
    if y_pred.ndim == 2:
        y_pred = y_pred.argmax(axis=-1)
    y_pred = y_pred.astype(np.int64).reshape(-1)
    if y_pred.shape != y_true.shape:
        raise ValueError(f"{y_pred.shape[0]} predictions but {y_true.shape[0]} labels")
    classes = list(range(num_labels))
    result = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "micro_f1": float(skm.f1_score(y_true, y_pred, labels=classes, average="micro", zero_division=0)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
    }
    if num_labels == 2:
        # F1 of the positive class; labels=[1] rather than average="binary", which rejects a -1 prediction
        result["f1"] = float(skm.f1_score(y_true, y_pred, labels=[1], average="micro", zero_division=0))
    return result


def regression_metrics(predictions, labels) -> dict[str, float]:
    """Pearson and Spearman correlation (scipy) and mean squared error."""
    from scipy import stats

    y_pred, y_true = _array(predictions).astype(np.float64).reshape(-1), _array(labels).astype(np.float64).reshape(-1)
    if y_pred.shape != y_true.shape:
        raise ValueError(f"{y_pred.shape[0]} predictions but {y_true.shape[0]} labels")
    return {
        "pearson": float(stats.pearsonr(y_pred, y_true)[0]),
        "spearman": float(stats.spearmanr(y_pred, y_true)[0]),
        "mse": float(np.mean((y_pred - y_true) ** 2)),
    }


def token_tag_sequences(predictions, labels, label_names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Word-level tag sequences from token-level predictions.

    Args:
        predictions: (N, T) tag ids or (N, T, C) logits, or a list of per-sentence lists.
        labels: (N, T) gold ids with -100 on the positions that are not a word's first sub-token.

    Returns:
        ``(gold, predicted)`` tag-name sequences, one per sentence, over the labelled positions only.
    """
    gold, predicted = [], []
    for pred_row, label_row in zip(predictions, labels):
        p, y = _array(pred_row), _array(label_row).astype(np.int64)
        if p.ndim == 2:
            p = p.argmax(axis=-1)
        if p.shape[0] != y.shape[0]:
            raise ValueError(f"predictions have {p.shape[0]} positions but labels {y.shape[0]}")
        keep = y != IGNORE_INDEX
        gold.append([label_names[i] for i in y[keep]])
        predicted.append([label_names[i] for i in p.astype(np.int64)[keep]])
    return gold, predicted


def compute_metrics(task: Task, predictions, labels) -> dict[str, float]:
    """The task's metrics (``task.metric_names``, main metric first) from predictions and gold labels.

    Args:
        task: the task (its kind and label names choose the metrics).
        predictions: classification / causal-LM: class ids (N,) or logits (N, C) (causal-LM: -1 for an
            answer that named no label); regression: (N,) or (N, 1) values; token classification: (N, T)
            ids or (N, T, C) logits.
        labels: the gold class ids / values / (N, T) tag ids with -100 where there is no word start.

    Returns:
        ``{metric name: value}`` for every name in ``task.metric_names``.
    """
    if task.kind == "regression":
        values = regression_metrics(predictions, labels)
    elif task.kind == "token-classification":
        values = ner_scores(*token_tag_sequences(predictions, labels, task.label_names))
    else:
        values = classification_metrics(predictions, labels, task.num_labels)
    return {name: values[name] for name in task.metric_names}


def classification_report(task: Task, predictions, labels) -> str:
    """scikit-learn's per-class precision / recall / F1 / support table with the task's label names."""
    from sklearn import metrics as skm

    y_pred, y_true = _array(predictions), _array(labels).astype(np.int64).reshape(-1)
    if y_pred.ndim == 2:
        y_pred = y_pred.argmax(axis=-1)
    return skm.classification_report(y_true, y_pred.astype(np.int64).reshape(-1), labels=list(range(task.num_labels)),
                                     target_names=task.label_names, digits=4, zero_division=0)
