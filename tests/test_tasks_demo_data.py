"""The offline demo data: deterministic, balanced enough, learnable, loadable by each task."""

import collections
import re
import statistics

import numpy as np
import pytest

from flaxft.data import load_tokenizer
from flaxft.tasks import classification, demo_data, metrics, ner, qa


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return demo_data.make_demo_data(tmp_path_factory.mktemp("demo"))


def test_files_are_deterministic_and_load_through_every_task(files, tmp_path, minilm_dir):
    again = demo_data.make_demo_data(tmp_path)
    for task in demo_data.TASKS:
        for split in ("train", "validation"):
            assert files[task][split].read_bytes() == again[task][split].read_bytes()
    tokenizer = load_tokenizer(str(minilm_dir))
    data = classification.build(
        tokenizer,
        128,
        train_file=str(files["classification"]["train"]),
        validation_file=str(files["classification"]["validation"]),
    )
    assert data.id2label == tuple(sorted(demo_data.FAMILIES))
    data = ner.build(
        tokenizer,
        128,
        train_file=str(files["ner"]["train"]),
        validation_file=str(files["ner"]["validation"]),
    )
    assert data.id2label == ("B-CODE", "B-STR", "I-STR", "O")
    data = qa.build(
        tokenizer,
        128,
        train_file=str(files["qa"]["train"]),
        validation_file=str(files["qa"]["validation"]),
        doc_stride=32,
    )
    windows = np.bincount(data.validation.host["example_index"])
    assert (windows > 1).mean() > 0.2  # many contexts need several windows at seq_len 128
    answered = data.train.arrays["start_positions"] > 0
    assert answered.mean() > 0.3


def test_classification_is_balanced_and_learnable_but_not_trivial():
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    train, validation = demo_data.classification_records()
    counts = collections.Counter(r["label"] for r in train)
    assert set(counts) == set(demo_data.FAMILIES) and len(train) > 400 and len(validation) > 80
    assert max(counts.values()) < 1.5 * min(counts.values())
    majority = max(collections.Counter(r["label"] for r in validation).values()) / len(validation)
    assert majority < 0.35
    vectorizer = CountVectorizer()
    model = MultinomialNB().fit(
        vectorizer.fit_transform([r["text"] for r in train]), [r["label"] for r in train]
    )
    predicted = model.predict(vectorizer.transform([r["text"] for r in validation]))
    accuracy = metrics.accuracy(predicted, [r["label"] for r in validation])
    assert accuracy > majority + 0.3  # learnable from the words...
    assert accuracy < 0.99  # ...but not by a lookup


def test_ner_tags_follow_uncased_text_and_need_context():
    train, validation = demo_data.ner_records()
    assert len(train) > 1000 and len(validation) > 200
    counts = collections.Counter(tag for r in train for tag in r["ner_tags"])
    assert {"B-CODE", "B-STR", "I-STR", "O"} == set(counts)
    entity_share = 1 - counts["O"] / sum(counts.values())
    assert 0.02 < entity_share < 0.3
    for r in train[:500]:  # an uncased tokenizer sees enough to tag every word
        assert demo_data.tag_words([w.lower() for w in r["tokens"]]) == r["ner_tags"]
    # Quoted words are STR only in quotes: the same word is O elsewhere, so context matters.
    tags_by_word = collections.defaultdict(set)
    for r in train:
        for word, tag in zip(r["tokens"], r["ner_tags"]):
            tags_by_word[word.lower()].add(tag)
    assert sum({"B-STR", "O"} <= tags for tags in tags_by_word.values()) > 20
    gold = [r["ner_tags"] for r in validation]
    assert metrics.entity_scores(gold, [["O"] * len(t) for t in gold])["f1"] == 0.0


def test_qa_answers_are_exact_unique_spans_found_by_matching_not_by_position():
    train, validation = demo_data.qa_records()
    assert len(train) > 1000 and len(validation) > 200
    oracle, first_word = [], []
    for r in validation:
        text, start = r["answers"]["text"][0], r["answers"]["answer_start"][0]
        assert r["context"][start : start + len(text)] == text
        left, right = re.match(
            r"Which word fills the blank: (.*) ___ (.*)$", r["question"]
        ).groups()
        # A reader that finds the quoted passage in the context and copies the blank:
        pattern = (
            r"\s*".join(map(re.escape, left.split()))
            + r"\s*(\S+?)\s*"
            + r"\s*".join(map(re.escape, right.split()))
        )
        match = re.search(pattern, r["context"])
        oracle.append(match.group(1) if match else "")
        first_word.append(r["context"].split()[0])
    golds = [r["answers"]["text"] for r in validation]
    assert metrics.squad_scores(oracle, golds)["exact_match"] > 95
    assert metrics.squad_scores(first_word, golds)["exact_match"] < 5
    assert len({r["answers"]["text"][0] for r in validation}) > 0.8 * len(
        validation
    )  # no constant answer


def test_topics_are_short_balanced_and_learnable_but_not_trivial():
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    train, validation = demo_data.topic_records()
    counts = collections.Counter(r["label"] for r in train)
    assert set(counts) == set(demo_data.TOPIC_FAMILIES) and len(train) > 600 and len(validation) > 150
    assert max(counts.values()) < 1.5 * min(counts.values())
    assert statistics.median(len(r["text"].split()) for r in train) < 15  # one sentence each
    assert not {r["text"] for r in train} & {r["text"] for r in validation}
    majority = max(collections.Counter(r["label"] for r in validation).values()) / len(validation)
    vectorizer = CountVectorizer()
    model = MultinomialNB().fit(vectorizer.fit_transform([r["text"] for r in train]), [r["label"] for r in train])
    predicted = model.predict(vectorizer.transform([r["text"] for r in validation]))
    accuracy = metrics.accuracy(predicted, [r["label"] for r in validation])
    assert majority + 0.2 < accuracy < 0.95
