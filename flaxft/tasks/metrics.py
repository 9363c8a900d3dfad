"""Host-side evaluation metrics for fine-tuning (numpy and plain Python; no jax).

Classification: `accuracy`, `f1_binary`, `macro_f1`, `matthews_corrcoef`, `pearson`,
`spearman`, and `glue_metrics` (the metric(s) GLUE reports for each of its tasks).
Token classification: `get_entities` and `entity_scores`, entity-level precision, recall
and F1 over BIO/IOBES tags exactly as `seqeval` computes them by default (its
conlleval-compatible mode: an `I-X` after `O` or after another type opens a new entity).
Extractive QA: `normalize_answer`, `squad_exact_match`, `squad_f1` and `squad_scores`
with the official SQuAD evaluation script's normalization.

Conventions: scores of an empty or degenerate input (no positive predictions, a
constant input to a correlation) are 0.0, as scikit-learn's `zero_division=0` and
`matthews_corrcoef` give them; nothing returns NaN. Classification, NER and GLUE scores
are fractions in [0, 1]; SQuAD exact match and F1 are percentages in [0, 100], as the
official script and Hugging Face's `squad` metric report them.
"""

import collections
import re
import string
from collections.abc import Sequence

import numpy as np

# ----------------------------------------------------------------------------- classification


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    """Fraction of predictions equal to their label (0.0 for no examples)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(predictions == labels)) if len(labels) else 0.0


def _f1(true_positive: int, predicted: int, actual: int) -> float:
    denominator = predicted + actual
    return 2.0 * true_positive / denominator if denominator else 0.0


def f1_binary(predictions: Sequence, labels: Sequence, positive=1) -> float:
    """F1 of the `positive` class (scikit-learn's `f1_score(average="binary")`)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    true_positive = int(np.sum((predictions == positive) & (labels == positive)))
    return _f1(true_positive, int(np.sum(predictions == positive)), int(np.sum(labels == positive)))


def macro_f1(predictions: Sequence, labels: Sequence) -> float:
    """Unweighted mean of per-class F1 over every class that occurs in `labels` or
    `predictions` (scikit-learn's `f1_score(average="macro")`)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes = np.union1d(predictions, labels)
    if not len(classes):
        return 0.0
    return float(np.mean([f1_binary(predictions, labels, c) for c in classes]))


def matthews_corrcoef(predictions: Sequence, labels: Sequence) -> float:
    """Matthews correlation coefficient, multi-class (Gorodkin's R_K, as scikit-learn
    computes it); 0.0 when it is undefined (a constant prediction or label)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    n = len(labels)
    if n == 0:
        return 0.0
    confusion = np.zeros((len(classes), len(classes)), np.float64)
    np.add.at(confusion, (encoded[:n], encoded[n:]), 1.0)
    true_per_class, predicted_per_class = confusion.sum(1), confusion.sum(0)
    correct, samples = np.trace(confusion), confusion.sum()
    covariance = correct * samples - true_per_class @ predicted_per_class
    denominator = np.sqrt(
        (samples**2 - predicted_per_class @ predicted_per_class)
        * (samples**2 - true_per_class @ true_per_class)
    )
    return float(covariance / denominator) if denominator else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of two equally long sequences (0.0 if either is constant)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(np.clip((x @ y) / denominator, -1.0, 1.0)) if denominator else 0.0


def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (scipy's `rankdata(method="average")`)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [len(x)]]) - 1
    ranks = np.empty(len(x), np.float64)
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of average ranks; 0.0 if either is constant)."""
    return pearson(rankdata(x), rankdata(y))


GLUE_TASKS = (
    "cola",
    "sst2",
    "mrpc",
    "qqp",
    "stsb",
    "mnli",
    "mnli_matched",
    "mnli_mismatched",
    "qnli",
    "rte",
    "wnli",
    "ax",
)


def glue_metrics(task: str, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """The metrics GLUE reports for `task` (one of `GLUE_TASKS`), with Hugging Face's
    names: cola -> matthews_correlation; mrpc, qqp -> accuracy, f1 (of label 1) and
    their mean combined_score; stsb -> pearson, spearmanr and combined_score; the rest
    -> accuracy. stsb takes float predictions, the rest class ids."""
    if task == "cola":
        return {"matthews_correlation": matthews_corrcoef(predictions, labels)}
    if task == "stsb":
        scores = {
            "pearson": pearson(predictions, labels),
            "spearmanr": spearman(predictions, labels),
        }
    elif task in ("mrpc", "qqp"):
        scores = {"accuracy": accuracy(predictions, labels), "f1": f1_binary(predictions, labels)}
    elif task in GLUE_TASKS:
        return {"accuracy": accuracy(predictions, labels)}
    else:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {GLUE_TASKS}")
    return {**scores, "combined_score": float(np.mean(list(scores.values())))}


# ----------------------------------------------------------------------------- entities (NER)


def get_entities(tags: Sequence[str] | Sequence[Sequence[str]]) -> list[tuple[str, int, int]]:
    """Entities (type, first, last) in a tag sequence, as `seqeval.metrics.sequence_labeling.
    get_entities` finds them (prefix tags B-, I-, E-, S-; "O" outside).

    A list of sequences is joined with an "O" between them, so positions index the
    concatenation (entities of different sentences never coincide).
    """
    if any(isinstance(s, (list, tuple)) for s in tags):
        tags = [tag for sequence in tags for tag in (*sequence, "O")]
    entities = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag = chunk[0] if chunk else "O"
        type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            entities.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return entities


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        prev_tag in ("E", "S")
        or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
        or (prev_tag not in ("O", ".") and prev_type != type_)
    )


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (
        tag in ("B", "S")
        or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != type_)
    )


def entity_scores(
    true_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Micro-averaged entity-level precision, recall and F1 (seqeval's default
    `precision_score`, `recall_score`, `f1_score`: an entity counts only if its type,
    start and end all match), plus the number of gold entities and per-type F1
    (`f1_<TYPE>`).

    true_tags, predicted_tags: one tag sequence per sentence, pairwise equally long.
    """
    if len(true_tags) != len(predicted_tags) or any(
        len(t) != len(p) for t, p in zip(true_tags, predicted_tags)
    ):
        raise ValueError("true and predicted tag sequences differ in number or length")
    true = set(get_entities([list(s) for s in true_tags]))
    predicted = set(get_entities([list(s) for s in predicted_tags]))
    correct = len(true & predicted)
    scores = {
        "precision": correct / len(predicted) if predicted else 0.0,
        "recall": correct / len(true) if true else 0.0,
        "f1": _f1(correct, len(predicted), len(true)),
        "num_entities": float(len(true)),
    }
    for type_ in sorted({entity[0] for entity in true | predicted}):
        t = {e for e in true if e[0] == type_}
        p = {e for e in predicted if e[0] == type_}
        scores[f"f1_{type_}"] = _f1(len(t & p), len(p), len(t))
    return scores


# ----------------------------------------------------------------------------- SQuAD

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalization: lower case, punctuation and the articles a/an/the removed,
    whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalized strings (SQuAD 2.0's script: if either is
    empty, 1.0 when both are, else 0.0)."""
    predicted_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not predicted_tokens or not gold_tokens:
        return float(predicted_tokens == gold_tokens)
    common = collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean over examples of the best exact match and F1 against any gold answer, in
    percent (`exact_match`, `f1`). An example with no gold answer (SQuAD 2.0's
    unanswerable) is scored against the empty string."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} examples")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    exact, f1 = [], []
    for prediction, answers in zip(predictions, golds):
        answers = list(answers) or [""]
        exact.append(max(squad_exact_match(prediction, a) for a in answers))
        f1.append(max(squad_f1(prediction, a) for a in answers))
    return {"exact_match": 100.0 * float(np.mean(exact)), "f1": 100.0 * float(np.mean(f1))}
