"""Metrics: compute_metrics wired to scikit-learn / scipy, entity-level NER scores checked by hand and
against seqeval (test-only reference)."""
import random

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from minift.data import Task, classification_report, compute_metrics, entities, ner_report, ner_scores
from minift.data.example import CLASSIFICATION_METRICS, NER_METRICS, REGRESSION_METRICS

TAGS = ["O", "B-DNA", "I-DNA", "B-protein", "I-protein"]


def _task(kind, labels, metrics, main=None):
    return Task(name="t", kind=kind, splits={}, label_names=labels, metric_names=list(metrics),
                main_metric=main or metrics[0])


def test_classification_metrics_match_sklearn_from_logits_and_ids():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    logits = rng.normal(size=(200, 4)) + np.eye(4)[labels] * 1.2
    task = _task("classification", ["a", "b", "c", "d"], CLASSIFICATION_METRICS)
    ours = compute_metrics(task, torch.tensor(logits), torch.tensor(labels))
    ids = logits.argmax(-1)
    assert ours == pytest.approx({
        "accuracy": skm.accuracy_score(labels, ids),
        "micro_f1": skm.f1_score(labels, ids, average="micro"),
        "macro_f1": skm.f1_score(labels, ids, average="macro"),
    })
    assert compute_metrics(task, ids, labels) == ours
    assert list(ours) == task.metric_names


def test_mcc_binary_f1_and_unparsed_causal_lm_answers():
    labels = np.array([0, 1, 1, 0, 1, 1, 0, 0, 1, 1])
    preds = np.array([0, 1, 0, 0, 1, 1, 1, 0, 1, -1])  # -1: a generated answer that named no label
    cola = _task("classification", ["unacceptable", "acceptable"], ["mcc", "accuracy"])
    assert compute_metrics(cola, preds, labels)["mcc"] == pytest.approx(skm.matthews_corrcoef(labels, preds))
    mrpc = _task("classification", ["no", "yes"], ["accuracy", "f1"])
    result = compute_metrics(mrpc, preds, labels)
    assert result["accuracy"] == pytest.approx(0.7)  # the -1 counts as wrong
    assert result["f1"] == pytest.approx(skm.f1_score(labels, preds, labels=[1], average="micro"))
    lm = Task(name="fpb", kind="causal-lm", splits={}, label_names=["n", "p"], metric_names=["accuracy", "macro_f1"],
              main_metric="accuracy", prompt="{text}", label_words=["n", "p"])
    assert compute_metrics(lm, preds, labels)["macro_f1"] == pytest.approx(
        skm.f1_score(labels, preds, labels=[0, 1], average="macro"))


def test_macro_f1_counts_classes_never_predicted():
    task = _task("classification", ["a", "b", "c"], CLASSIFICATION_METRICS)
    result = compute_metrics(task, [0, 0, 1, 1], [0, 0, 1, 2])
    assert result["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_regression_metrics_match_scipy():
    rng = np.random.default_rng(1)
    gold = rng.uniform(0, 5, size=100)
    pred = gold + rng.normal(scale=0.8, size=100)
    task = _task("regression", [], REGRESSION_METRICS)
    result = compute_metrics(task, torch.tensor(pred, dtype=torch.float32).unsqueeze(1), gold)
    assert result["pearson"] == pytest.approx(stats.pearsonr(pred, gold)[0], abs=1e-6)
    assert result["spearman"] == pytest.approx(stats.spearmanr(pred, gold)[0], abs=1e-6)
    assert result["mse"] == pytest.approx(np.mean((pred - gold) ** 2), rel=1e-5)


def test_per_class_report_uses_label_names():
    task = _task("classification", ["World", "Sports"], CLASSIFICATION_METRICS)
    report = classification_report(task, [0, 1, 1], [0, 1, 0])
    assert "World" in report and "Sports" in report and "support" in report


def test_entities_hand_checked():
    assert entities(["B-DNA", "I-DNA", "O", "B-protein"]) == [("DNA", 0, 1), ("protein", 3, 3)]
    assert entities(["O", "I-DNA", "I-DNA"]) == [("DNA", 1, 2)]  # I- after O starts an entity (seqeval)
    assert entities(["B-DNA", "I-protein"]) == [("DNA", 0, 0), ("protein", 1, 1)]  # type change
    assert entities(["B-DNA", "B-DNA", "I-DNA"]) == [("DNA", 0, 0), ("DNA", 1, 2)]
    with pytest.raises(ValueError, match="not IOB2"):
        entities(["E-DNA"])


def test_ner_scores_hand_checked():
    gold = [["B-DNA", "I-DNA", "O", "B-protein", "O"], ["B-protein", "I-protein", "I-protein"]]
    pred = [["B-DNA", "I-DNA", "O", "O", "O"], ["B-protein", "I-protein", "O"]]
    # gold: 3 entities; predicted: 2, of which only DNA 0-1 has an exact match; 6 of 8 words right
    scores = ner_scores(gold, pred)
    assert scores["precision"] == pytest.approx(1 / 2)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert scores["token_accuracy"] == pytest.approx(6 / 8)
    assert ner_scores([["O"]], [["O"]])["f1"] == 0.0


def _random_tags(rng, n):
    return [rng.choice(TAGS + ["O", "O"]) for _ in range(n)]  # ill-formed sequences included


def test_ner_scores_match_seqeval_on_random_sequences():
    seqeval_metrics = pytest.importorskip("seqeval.metrics")
    rng = random.Random(0)
    for trial in range(30):
        gold = [_random_tags(rng, rng.randint(1, 12)) for _ in range(8)]
        pred = [[t if rng.random() < 0.6 else rng.choice(TAGS) for t in sentence] for sentence in gold]
        ours = ner_scores(gold, pred)
        assert ours["precision"] == pytest.approx(seqeval_metrics.precision_score(gold, pred, zero_division=0))
        assert ours["recall"] == pytest.approx(seqeval_metrics.recall_score(gold, pred, zero_division=0))
        assert ours["f1"] == pytest.approx(seqeval_metrics.f1_score(gold, pred, zero_division=0))
        assert ours["token_accuracy"] == pytest.approx(seqeval_metrics.accuracy_score(gold, pred))
        report = seqeval_metrics.classification_report(gold, pred, output_dict=True, zero_division=0)
        for kind, row in ner_report(gold, pred).items():
            assert row["f1"] == pytest.approx(report[kind]["f1-score"]), (trial, kind)
            assert row["support"] == report[kind]["support"]


def test_compute_metrics_for_ner_uses_word_starts_only():
    task = _task("token-classification", TAGS, NER_METRICS)
    labels = torch.tensor([[-100, 1, -100, 2, 0, -100], [-100, 3, 4, -100, -100, -100]])
    preds = torch.tensor([[0, 1, 4, 2, 0, 0], [3, 3, 0, 0, 0, 0]])  # sub-token and padding positions ignored
    result = compute_metrics(task, preds, labels)
    # words: [B-DNA I-DNA O] vs [B-DNA I-DNA O]; [B-protein I-protein] vs [B-protein O]
    assert result["precision"] == pytest.approx(1 / 2) and result["recall"] == pytest.approx(1 / 2)
    assert result["token_accuracy"] == pytest.approx(4 / 5)
    logits = torch.nn.functional.one_hot(preds, 5).float()
    assert compute_metrics(task, logits, labels) == result


def test_binary_f1_equals_sklearn_binary_on_clean_predictions():
    rng = np.random.default_rng(2)
    labels, preds = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    task = _task("classification", ["no", "yes"], ["accuracy", "f1"])
    assert compute_metrics(task, preds, labels)["f1"] == pytest.approx(skm.f1_score(labels, preds))
