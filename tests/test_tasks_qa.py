"""Extractive QA: windows with a stride, span labels, n-best decoding back to characters."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from flaxft.data import Split, load_tokenizer
from flaxft.errors import InputError
from flaxft.models import FAMILIES, EncoderOutput
from flaxft.tasks import qa
from tests.tokenizers_for_tests import roberta_style_folder

SEQ_LEN = 32
FILLER = "The quick brown fox jumps over the lazy dog near the river bank today. "
CONTEXT = FILLER * 4 + "The treaty was signed in Reykjavík-Nord on 12 May 1998. " + FILLER * 2


def record(
    question="Where was the treaty signed?", answer="Reykjavík-Nord", context=CONTEXT, id_="q0"
):
    start = context.index(answer) if answer else None
    answers = (
        {"text": [answer], "answer_start": [start]} if answer else {"text": [], "answer_start": []}
    )
    return {"id": id_, "question": question, "context": context, "answers": answers}


def perfect_logits(features):
    """Logits that put all mass on each row's labelled start and end."""
    n, seq_len = features.arrays["input_ids"].shape
    start = np.full((n, seq_len), -5.0)
    end = np.full((n, seq_len), -5.0)
    start[np.arange(n), features.arrays["start_positions"]] = 5.0
    end[np.arange(n), features.arrays["end_positions"]] = 5.0
    return {"start_logits": start, "end_logits": end}


def test_long_context_is_split_into_overlapping_windows(tokenizer):
    features = qa.make_features(Split([record()], "x"), tokenizer, SEQ_LEN, doc_stride=8)
    host, arrays = features.host, features.arrays
    question = tokenizer.encode("Where was the treaty signed?", add_special_tokens=False).ids
    context = tokenizer.encode(CONTEXT, add_special_tokens=False).ids
    width = SEQ_LEN - 3 - len(question)
    assert len(features) > 3 and (host["example_index"] == 0).all()
    assert host["window_start"].tolist() == [i * (width - 8) for i in range(len(features))]
    assert host["window_start"][-1] + host["window_length"][-1] == len(
        context
    )  # the end is covered
    for f in range(len(features)):
        first, length = host["window_start"][f], host["window_length"][f]
        row = arrays["input_ids"][f]
        assert row[: len(question) + 2].tolist() == [101, *question, 102]
        assert (
            row[len(question) + 2 : len(question) + 2 + length].tolist()
            == context[first : first + length]
        )
        assert arrays["token_type_ids"][f].sum() == length + 1
    # Windows holding the whole answer label it; the others point at [CLS].
    answered = arrays["start_positions"] > 0
    assert 1 <= answered.sum() < len(features)
    for f in np.flatnonzero(answered):
        s, e = arrays["start_positions"][f], arrays["end_positions"][f]
        assert tokenizer.decode(arrays["input_ids"][f, s : e + 1].tolist()) == "reykjavik - nord"
    assert (arrays["end_positions"][~answered] == 0).all()


def test_evaluate_recovers_the_exact_answer_text_from_perfect_logits(tokenizer):
    records = [
        record(),
        record("When?", "12 May 1998", id_="q1"),
        record("What animal?", "fox", FILLER, "q2"),
    ]
    features = qa.make_features(Split(records, "x"), tokenizer, SEQ_LEN, doc_stride=8)
    metrics, predictions = qa.evaluate(perfect_logits(features), features)
    assert [p["prediction_text"] for p in predictions] == ["Reykjavík-Nord", "12 May 1998", "fox"]
    assert predictions[0]["id"] == "q0" and predictions[0]["answers"] == ["Reykjavík-Nord"]
    assert metrics == {"exact_match": 100.0, "f1": 100.0}


def test_n_best_and_max_answer_length(tokenizer):
    features = qa.make_features(
        Split([record("What animal?", "fox", FILLER)], "x"), tokenizer, SEQ_LEN, doc_stride=8
    )
    outputs = perfect_logits(features)
    start, end = features.arrays["start_positions"][0], features.arrays["end_positions"][0]
    # A higher-scoring end 6 tokens later: the span "fox jumps over the lazy dog" wins...
    outputs["end_logits"][0, end + 5] = 9.0
    assert qa.evaluate(outputs, features)[1][0]["prediction_text"] == "fox jumps over the lazy dog"
    # ...unless spans that long are excluded.
    assert qa.evaluate(outputs, features, max_answer_length=3)[1][0]["prediction_text"] == "fox"
    # An end before the start is never a span; with n_best_size 1 only the top start and end
    # are tried.
    outputs = perfect_logits(features)
    outputs["end_logits"][0, start - 1] = 9.0
    assert qa.evaluate(outputs, features, n_best_size=2)[1][0]["prediction_text"] == "fox"
    assert qa.evaluate(outputs, features, n_best_size=1)[1][0]["prediction_text"] == ""
    with pytest.raises(InputError, match="n_best_size"):
        qa.evaluate(outputs, features, n_best_size=0)


def test_unanswerable_examples(tokenizer):
    records = [record("What animal?", "fox", FILLER, "a"), record("Who?", "", FILLER, "b")]
    features = qa.make_features(Split(records, "x"), tokenizer, SEQ_LEN, doc_stride=8)
    assert features.host["has_unanswerable"]
    assert features.arrays["start_positions"][1] == 0 and features.arrays["end_positions"][1] == 0
    metrics, predictions = qa.evaluate(perfect_logits(features), features)
    assert [p["prediction_text"] for p in predictions] == ["fox", ""]
    assert metrics["exact_match"] == 100.0


def test_build_from_squad_json(tmp_path, tokenizer):
    squad = {
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": FILLER,
                        "qas": [
                            {
                                "id": "1",
                                "question": "What animal?",
                                "answers": [{"text": "fox", "answer_start": FILLER.index("fox")}],
                            },
                        ],
                    }
                ],
            }
        ]
    }
    (tmp_path / "train.json").write_text(json.dumps(squad))
    data = qa.build(
        tokenizer,
        SEQ_LEN,
        train_file=str(tmp_path / "train.json"),
        validation_file=str(tmp_path / "train.json"),
        doc_stride=8,
    )
    assert data.validation.host["examples"][0]["id"] == "1"
    metrics, _ = qa.evaluate(perfect_logits(data.validation), data.validation)
    assert metrics["exact_match"] == 100.0
    assert FAMILIES["bert"].architecture(qa.QA.head).__name__ == "BertForQuestionAnswering"


def run_qa_labels(hf_tokenizer, example, seq_len, doc_stride):
    """transformers' windows of one `record` and their (start, end) token labels, as
    run_qa's prepare_train_features finds them from `return_offsets_mapping`."""
    (answer_start,), (answer,) = example["answers"]["answer_start"], example["answers"]["text"]
    encoding = hf_tokenizer(
        example["question"], example["context"], truncation="only_second", max_length=seq_len,
        stride=doc_stride,
        return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length",
        return_token_type_ids=True,
    )
    end_char = answer_start + len(answer)
    labels = []
    for window, offsets in enumerate(encoding["offset_mapping"]):
        sequence_ids = encoding.sequence_ids(window)
        first = sequence_ids.index(1)
        last = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
        if not (offsets[first][0] <= answer_start and offsets[last][1] >= end_char):
            labels.append((0, 0))
            continue
        while first < len(offsets) and offsets[first][0] <= answer_start:
            first += 1
        while offsets[last][1] >= end_char:
            last -= 1
        labels.append((first - 1, last + 1))
    return encoding, labels


def answers_through_transformers_windows(folder):
    """Checks QA features of a few records against transformers' windows and run_qa's
    labels for the tokenizer in `folder`; returns (predicted texts, answers) of perfect
    logits."""
    tokenizer = load_tokenizer(str(folder))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    records = [
        record(),
        record("When?", "12 May 1998", id_="q1"),
        record("What animal?", "fox", FILLER, "q2"),
        record("Which river bank?", "river bank", FILLER, "q3"),
    ]
    seq_len, doc_stride = 64, 24
    features = qa.make_features(Split(records, "x"), tokenizer, seq_len, doc_stride=doc_stride)
    arrays, host = features.arrays, features.host
    for i, example in enumerate(records):
        encoding, labels = run_qa_labels(hf_tokenizer, example, seq_len, doc_stride)
        windows = np.flatnonzero(host["example_index"] == i)
        assert arrays["input_ids"][windows].tolist() == encoding["input_ids"]
        assert arrays["attention_mask"][windows].tolist() == encoding["attention_mask"]
        # The first window only: `tokenizers` gives the context of a TemplateProcessing
        # pair's overflowing parts type 1 whatever the template says (XLM-R's returns none).
        assert arrays["token_type_ids"][windows[0]].tolist() == encoding["token_type_ids"][0]
        positions = list(zip(arrays["start_positions"][windows], arrays["end_positions"][windows]))
        assert positions == labels and any(span != (0, 0) for span in labels)
        assert host["context_start"][windows].tolist() == [
            encoding.sequence_ids(w).index(1) for w in range(len(windows))
        ]
    _, predictions = qa.evaluate(perfect_logits(features), features)
    return [p["prediction_text"] for p in predictions], [p["answers"][0] for p in predictions]


def test_windows_and_answer_tokens_match_transformers(roberta_or_xlmr_dir):
    texts, answers = answers_through_transformers_windows(roberta_or_xlmr_dir)
    assert texts == answers


def test_untrimmed_byte_level_offsets_keep_the_space_before_a_word(tmp_path):
    texts, answers = answers_through_transformers_windows(
        roberta_style_folder(tmp_path / "untrimmed", trim_offsets=False)
    )
    # A span starts at the space before its word ("Ġfox"), as transformers' offsets do.
    assert [text.lstrip() for text in texts] == answers and any(text.startswith(" ") for text in texts)


def test_bad_inputs(tmp_path, tokenizer):
    bad_start = record("What animal?", "fox", FILLER)
    bad_start["answers"]["answer_start"] = [len(FILLER)]
    with pytest.raises(InputError, match="x: answer 'fox' at .* record 0 lies outside its context"):
        qa.make_features(Split([bad_start], "x"), tokenizer, SEQ_LEN, doc_stride=8)
    with pytest.raises(InputError, match="task.doc_stride"):
        qa.make_features(Split([record()], "x"), tokenizer, SEQ_LEN, doc_stride=128)
    with pytest.raises(InputError, match=r"no column 'query' \(task.question_field\)"):
        qa.make_features(Split([record()], "x"), tokenizer, SEQ_LEN, doc_stride=8, question_field="query")
    broken = record()
    broken["answers"] = ["Reykjavík"]
    with pytest.raises(InputError, match="'answers' of record 0 must be"):
        qa.make_features(Split([broken], "x"), tokenizer, SEQ_LEN, doc_stride=8)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="empty.jsonl"):
        qa.build(tokenizer, SEQ_LEN, train_file=str(tmp_path / "empty.jsonl"), doc_stride=8)


def test_loss_averages_start_and_end_over_real_rows():
    rng = np.random.default_rng(0)
    start, end = (
        rng.normal(size=(3, 6)).astype(np.float32),
        rng.normal(size=(3, 6)).astype(np.float32),
    )
    batch = {
        "start_positions": jnp.asarray([1, 0, 4]),
        "end_positions": jnp.asarray([2, 0, 5]),
        "weights": jnp.asarray([1.0, 1.0, 0.0]),
    }
    loss, metrics = jax.jit(
        lambda b, s, e: qa.QA().loss_and_metrics(
            EncoderOutput(None, start_logits=s, end_logits=e), b, qa.QA().normalizers(b)
        )
    )(batch, jnp.asarray(start), jnp.asarray(end))
    ls, le = np.asarray(jax.nn.log_softmax(start)), np.asarray(jax.nn.log_softmax(end))
    expected = (-(ls[0, 1] + ls[1, 0]) / 2 - (le[0, 2] + le[1, 0]) / 2) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert set(metrics) == {"loss", "start_loss", "end_loss", "start_accuracy", "end_accuracy"}
