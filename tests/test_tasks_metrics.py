"""Host-side fine-tuning metrics: hand-computed values, and scikit-learn / scipy where installed."""

import numpy as np
import pytest

from flaxft.tasks import metrics as m


def test_accuracy_and_binary_f1_by_hand():
    predictions = [1, 0, 1, 1, 0, 0]
    labels = [1, 1, 1, 0, 0, 0]
    assert m.accuracy(predictions, labels) == pytest.approx(4 / 6)
    # tp = 2, predicted positives 3, actual positives 3 -> precision = recall = 2/3
    assert m.f1_binary(predictions, labels) == pytest.approx(2 / 3)
    assert m.f1_binary([0, 0], [0, 0]) == 0.0  # no positives anywhere: 0, never NaN
    assert m.accuracy([], []) == 0.0


def test_macro_f1_and_mcc_by_hand():
    predictions = [0, 0, 1, 2, 2, 2]
    labels = [0, 1, 1, 2, 2, 0]
    # class 0: tp 1, pred 2, true 2 -> 0.5; class 1: tp 1, pred 1, true 2 -> 2/3;
    # class 2: tp 2, pred 3, true 2 -> 0.8
    assert m.macro_f1(predictions, labels) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    # binary MCC: tp 2, tn 2, fp 1, fn 1 -> (4 - 1) / sqrt(3 * 3 * 3 * 3) = 1/3
    assert m.matthews_corrcoef([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0]) == pytest.approx(1 / 3)
    assert m.matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # constant prediction: undefined -> 0


def test_correlations_by_hand():
    assert m.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert m.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert m.pearson([1, 1, 1], [1, 2, 3]) == 0.0
    np.testing.assert_allclose(m.rankdata([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    # monotone but not linear: Spearman 1, Pearson below 1
    assert m.spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert m.pearson([1, 2, 3, 4], [1, 4, 9, 100]) < 0.9


def test_against_sklearn_and_scipy():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for classes in (2, 3, 5):
        labels = rng.integers(0, classes, 200)
        predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, classes, 200))
        assert m.accuracy(predictions, labels) == pytest.approx(
            sklearn_metrics.accuracy_score(labels, predictions)
        )
        assert m.macro_f1(predictions, labels) == pytest.approx(
            sklearn_metrics.f1_score(labels, predictions, average="macro")
        )
        assert m.matthews_corrcoef(predictions, labels) == pytest.approx(
            sklearn_metrics.matthews_corrcoef(labels, predictions)
        )
        if classes == 2:
            assert m.f1_binary(predictions, labels) == pytest.approx(
                sklearn_metrics.f1_score(labels, predictions)
            )
    x = rng.normal(size=100)
    y = x + rng.normal(size=100)
    y_ties = np.round(y)  # ties, for Spearman's average ranks
    assert m.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert m.spearman(x, y_ties) == pytest.approx(stats.spearmanr(x, y_ties)[0])
    np.testing.assert_allclose(m.rankdata(y_ties), stats.rankdata(y_ties))


def test_glue_metrics_per_task():
    assert set(m.glue_metrics("cola", [1, 0], [1, 0])) == {"matthews_correlation"}
    assert set(m.glue_metrics("sst2", [1, 0], [1, 0])) == {"accuracy"}
    assert set(m.glue_metrics("mnli", [1, 0], [1, 0])) == {"accuracy"}
    mrpc = m.glue_metrics("mrpc", [1, 1, 0, 0], [1, 0, 0, 0])
    assert mrpc["accuracy"] == pytest.approx(0.75)
    assert mrpc["f1"] == pytest.approx(2 / 3)
    assert mrpc["combined_score"] == pytest.approx((0.75 + 2 / 3) / 2)
    stsb = m.glue_metrics("stsb", [0.1, 0.5, 0.9], [1.0, 2.0, 5.0])
    assert set(stsb) == {"pearson", "spearmanr", "combined_score"}
    assert stsb["spearmanr"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        m.glue_metrics("squad", [1], [1])


def test_get_entities_follows_seqeval_default():
    # Values worked out from seqeval's get_entities (default, conlleval-compatible mode).
    assert m.get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # I- after O starts an entity; a type change ends one and starts the next.
    assert m.get_entities(["O", "I-PER", "I-PER", "I-LOC"]) == [("PER", 1, 2), ("LOC", 3, 3)]
    # B- after B- of the same type: two entities.
    assert m.get_entities(["B-PER", "B-PER"]) == [("PER", 0, 0), ("PER", 1, 1)]
    # IOBES: S- is a single-token entity, E- closes one.
    assert m.get_entities(["S-ORG", "B-MISC", "E-MISC", "O"]) == [("ORG", 0, 0), ("MISC", 1, 2)]
    # Sentences are joined by an "O": an entity never spans two sentences.
    assert m.get_entities([["B-PER"], ["I-PER"]]) == [("PER", 0, 0), ("PER", 2, 2)]


def test_entity_scores_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-LOC"]]
    # gold: PER(0,1) LOC(3,3) ORG(5,5); predicted: PER(0,1) ORG(3,3) ORG(5,5) LOC(6,6)
    scores = m.entity_scores(gold, predicted)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert scores["num_entities"] == 3
    assert scores["f1_PER"] == 1.0 and scores["f1_LOC"] == 0.0
    assert scores["f1_ORG"] == pytest.approx(2 / 3)
    # A partial match is a miss: strict boundaries.
    assert m.entity_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])["f1"] == 0.0
    assert m.entity_scores([["O"]], [["O"]])["f1"] == 0.0
    with pytest.raises(ValueError):
        m.entity_scores([["O", "O"]], [["O"]])


def test_squad_normalization_exact_match_and_f1():
    assert m.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert m.normalize_answer("an apple a day") == "apple day"
    assert m.squad_exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    # prediction "eiffel tower in paris" vs gold "eiffel tower": precision 2/4, recall 1
    assert m.squad_f1("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 * 0.5 / 1.5)
    assert m.squad_f1("no overlap", "eiffel tower") == 0.0
    assert m.squad_f1("", "") == 1.0 and m.squad_f1("a", "") == 1.0  # "a" normalizes to empty
    scores = m.squad_scores(["Paris", "in 1889"], [["paris", "Paris, France"], ["1889"]])
    assert scores["exact_match"] == pytest.approx(50.0)  # percent
    assert scores["f1"] == pytest.approx(100 * (1.0 + 2 * 0.5 / 1.5) / 2)
    assert m.squad_scores([""], [[]]) == {"exact_match": 100.0, "f1": 100.0}  # unanswerable
