"""Token classification: first-sub-word labels, tags, evaluation and the loss."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from flaxft.data import Split, load_tokenizer
from flaxft.errors import InputError
from flaxft.models import FAMILIES, EncoderOutput
from flaxft.tasks import ner

SEQ_LEN = 24
TAGS = ["B-LOC", "B-PER", "I-PER", "O"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


ROWS = [
    {
        "tokens": ["Angela", "Merkelization", "visited", "Reykjavik"],
        "ner_tags": ["B-PER", "I-PER", "O", "B-LOC"],
    },
    {"tokens": ["Paris", "."], "ner_tags": ["B-LOC", "O"]},
]


def test_only_first_sub_words_are_labelled(tokenizer):
    features = ner.make_features(Split(ROWS, "x"), tokenizer, SEQ_LEN, tags=TAGS)
    encoding = tokenizer.encode(ROWS[0]["tokens"], is_pretokenized=True)
    labels = features.arrays["labels"][0]
    n = len(encoding.ids)
    assert features.arrays["input_ids"][0, :n].tolist() == encoding.ids
    expected, previous = [], None
    for word in encoding.word_ids:  # None on [CLS] / [SEP]
        expected.append(
            -100 if word is None or word == previous else TAGS.index(ROWS[0]["ner_tags"][word])
        )
        previous = word
    assert labels[:n].tolist() == expected
    assert (labels[n:] == -100).all()
    assert len(encoding.ids) > len(ROWS[0]["tokens"]) + 2  # some word really was split
    assert (features.arrays["labels"][0] >= 0).sum() == 4
    assert features.host["word_index"][0][labels >= 0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("seq_len", [SEQ_LEN, 9])
def test_word_alignment_matches_transformers(roberta_or_xlmr_dir, seq_len):
    """Sub-words, specials and first-sub-word labels equal transformers' with pre-split words
    (is_split_into_words, add_prefix_space for byte-level BPE: every word gets its "Ġ"),
    also when truncation cuts words off."""
    tokenizer = load_tokenizer(str(roberta_or_xlmr_dir))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(roberta_or_xlmr_dir), add_prefix_space=True)
    features = ner.make_features(Split(ROWS, "x"), tokenizer, seq_len, tags=TAGS)
    for row, record in enumerate(ROWS):
        encoding = hf_tokenizer(record["tokens"], is_split_into_words=True, truncation=True, max_length=seq_len)
        n = len(encoding["input_ids"])
        assert features.arrays["input_ids"][row, :n].tolist() == encoding["input_ids"]
        assert (features.arrays["input_ids"][row, n:] == tokenizer.token_to_id("<pad>")).all()
        expected, previous = [], None
        for word in encoding.word_ids():
            first = word is not None and word != previous
            expected.append(TAGS.index(record["ner_tags"][word]) if first else -100)
            previous = word
        labels = features.arrays["labels"][row]
        assert labels[:n].tolist() == expected and (labels[n:] == -100).all()
        word_index = features.host["word_index"][row]
        assert word_index[labels >= 0].tolist() == sorted(set(encoding.word_ids()) - {None})
    labelled = np.flatnonzero(features.arrays["labels"][0] >= 0)
    assert len(labelled) < features.arrays["attention_mask"][0].sum() - 2  # words really were split
    if roberta_or_xlmr_dir.name == "byte_level_bpe":
        assert all(tokenizer.id_to_token(features.arrays["input_ids"][0, p]).startswith("Ġ") for p in labelled)


def test_word_alignment_matches_transformers_with_a_modernbert_tokenizer(tmp_path):
    """A byte-level BPE with a template post-processor ([CLS] A [SEP], as ModernBERT's) is
    what transformers loads as its generic fast tokenizer, which encodes pre-split words as
    its pre-tokenizer does (no "Ġ" added, whatever add_prefix_space says): flaxft's rows
    are transformers' rows."""
    from tests.tokenizers_for_tests import modernbert_style_folder

    folder = modernbert_style_folder(tmp_path / "modernbert")
    tokenizer = load_tokenizer(str(folder))
    features = ner.make_features(Split(ROWS, "x"), tokenizer, SEQ_LEN, tags=TAGS)
    for add_prefix_space in (False, True):
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), add_prefix_space=add_prefix_space)
        for row, record in enumerate(ROWS):
            encoding = hf_tokenizer(record["tokens"], is_split_into_words=True, truncation=True, max_length=SEQ_LEN)
            n = len(encoding["input_ids"])
            assert features.arrays["input_ids"][row, :n].tolist() == encoding["input_ids"], add_prefix_space
            first = [w is not None and w != (encoding.word_ids()[p - 1] if p else None)
                     for p, w in enumerate(encoding.word_ids())]
            assert (features.arrays["labels"][row, :n] >= 0).tolist() == first
    assert tokenizer.id_to_token(int(features.arrays["input_ids"][0, 1])) == "A"  # no space marker


def test_build_from_jsonl_and_parquet(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "dev.parquet")
    data = ner.build(
        tokenizer,
        SEQ_LEN,
        train_file=write_jsonl(tmp_path / "train.jsonl", ROWS),
        validation_file=str(tmp_path / "dev.parquet"),
        pack="none",
    )
    assert data.id2label == tuple(TAGS) and data.num_labels == 4
    np.testing.assert_array_equal(data.train.arrays["labels"], data.validation.arrays["labels"])
    assert FAMILIES["bert"].architecture(ner.NER.head).__name__ == "BertForTokenClassification"


def test_string_tokens_in_csv_are_split_on_whitespace(tmp_path, tokenizer):
    (tmp_path / "train.csv").write_text("tokens,ner_tags\nParis is nice,B-LOC O O\n")
    data = ner.build(tokenizer, SEQ_LEN, train_file=str(tmp_path / "train.csv"))
    assert data.train.host["words"] == [["Paris", "is", "nice"]]
    assert data.id2label == ("B-LOC", "O")


def test_class_label_tags_keep_the_dataset_order(tokenizer):
    split = Split(
        [{"tokens": ["EU", "rejects"], "ner_tags": [3, 0]}],
        "ds[train]",
        class_names={"ner_tags": ["O", "B-PER", "I-PER", "B-ORG"]},
    )
    tags = ner.infer_tags(split)
    assert tags == ["O", "B-PER", "I-PER", "B-ORG"]
    features = ner.make_features(split, tokenizer, SEQ_LEN, tags=tags)
    assert features.arrays["labels"][0][features.arrays["labels"][0] >= 0].tolist() == [3, 0]
    assert features.host["tags"] == [["B-ORG", "O"]]


def test_bad_inputs(tmp_path, tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS)
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"tokens": ["Bonn"], "ner_tags": ["B-ORG"]}])
    with pytest.raises(
        InputError, match=r"dev.jsonl: tag 'B-ORG' .*record 0.* not one of the training tags"
    ):
        ner.build(tokenizer, SEQ_LEN, train_file=train, validation_file=dev)
    with pytest.raises(InputError, match=r"no column 'words' \(task.tokens_field\)"):
        ner.build(tokenizer, SEQ_LEN, train_file=train, tokens_field="words")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"tokens": ["a", "b"], "ner_tags": ["O"]}])
    with pytest.raises(InputError, match="bad.jsonl: record 0 has 2 words .* but 1 tags"):
        ner.build(tokenizer, SEQ_LEN, train_file=bad)
    ints = write_jsonl(tmp_path / "ints.jsonl", [{"tokens": ["a"], "ner_tags": [1]}])
    with pytest.raises(InputError, match="not a string"):
        ner.build(tokenizer, SEQ_LEN, train_file=ints)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(InputError, match="empty.jsonl.* is empty"):
        ner.build(tokenizer, SEQ_LEN, train_file=str(tmp_path / "empty.jsonl"))


def test_evaluate_perfect_partial_and_truncated(tokenizer):
    features = ner.make_features(Split(ROWS, "x"), tokenizer, SEQ_LEN, tags=TAGS)
    labels = features.arrays["labels"]
    perfect = np.where(labels >= 0, labels, TAGS.index("O"))
    metrics, predictions = ner.evaluate({"predictions": perfect}, features)
    assert metrics["f1"] == 1.0 and metrics["accuracy"] == 1.0 and metrics["unpredicted_words"] == 0
    assert predictions[0]["predicted_tags"] == ROWS[0]["ner_tags"]
    # Predicting I-PER on a non-first sub-word changes nothing: only first sub-words count.
    noisy = perfect.copy()
    noisy[labels < 0] = TAGS.index("I-PER")
    assert ner.evaluate({"predictions": noisy}, features)[0]["f1"] == 1.0
    # Logits work too; miss the location in row 0: 2 of 3 entities found, none wrong.
    logits = np.eye(len(TAGS))[perfect]
    logits[0, features.host["word_index"][0] == 3] = np.eye(len(TAGS))[TAGS.index("O")]
    metrics = ner.evaluate({"logits": logits}, features)[0]
    assert metrics["precision"] == 1.0 and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(5 / 6)
    # Truncation: at seq_len 6 the last words of row 0 get no prediction and count as "O".
    short = ner.make_features(Split(ROWS, "x"), tokenizer, 6, tags=TAGS)
    short_labels = short.arrays["labels"]
    metrics = ner.evaluate({"predictions": np.where(short_labels >= 0, short_labels, 3)}, short)[0]
    assert metrics["unpredicted_words"] > 0 and metrics["recall"] < 1.0


def test_loss_ignores_sub_words_padding_and_padding_rows():
    labels = np.full((2, 4), -100, np.int32)
    labels[0, 1], labels[0, 3], labels[1, 1] = 1, 0, 1
    logits = np.random.default_rng(0).normal(size=(2, 4, 2)).astype(np.float32)
    batch = {
        "input_ids": jnp.zeros((2, 4), jnp.int32),
        "labels": jnp.asarray(labels),
        "weights": jnp.asarray([1.0, 0.0]),
    }
    loss, metrics = jax.jit(
        lambda b, x: ner.NER().loss_and_metrics(EncoderOutput(None, logits=x), b, ner.NER().normalizers(b))
    )(batch, jnp.asarray(logits))
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    assert float(loss) == pytest.approx(-(log_probs[0, 1, 1] + log_probs[0, 3, 0]) / 2, rel=1e-6)
    assert float(metrics["accuracy"]) in (0.0, 0.5, 1.0)
    full = {**batch, "attention_mask": batch["input_ids"], "token_type_ids": batch["input_ids"]}
    assert set(ner.NER().model_inputs(full)) == {"input_ids", "attention_mask", "token_type_ids"}
    out = ner.NER().eval_outputs(EncoderOutput(None, logits=jnp.asarray(logits)), batch)
    np.testing.assert_array_equal(out["predictions"], logits.argmax(-1))


def test_packed_rows_carry_the_labels_and_give_the_same_metrics(tokenizer):
    rows = ROWS * 5
    features = ner.make_features(Split(rows, "x"), tokenizer, SEQ_LEN, tags=TAGS)
    packed = ner.pack_features(features, max_segments=3)
    arrays = packed.arrays
    assert len(packed) < len(features) and arrays["segment_ids"].max() <= 3
    # Every labelled token is still there, in its example's segment, with its label.
    assert sorted(arrays["labels"][arrays["labels"] >= 0].tolist()) == sorted(
        features.arrays["labels"][features.arrays["labels"] >= 0].tolist()
    )
    np.testing.assert_array_equal(arrays["attention_mask"], arrays["segment_ids"] > 0)
    assert set(ner.NER().model_inputs(arrays)) == {"input_ids", "attention_mask", "token_type_ids", "segment_ids"}
    # The same per-token predictions, packed, score and predict exactly as unpacked.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(*features.arrays["labels"].shape, len(TAGS)))
    predicted = logits.argmax(-1)
    placed = packed.host["packing"]
    packed_predicted = np.zeros(arrays["labels"].shape, np.int64)
    for i, (r, s, n) in enumerate(zip(placed.row, placed.start, placed.length)):
        packed_predicted[r, s : s + n] = predicted[i, :n]
    assert ner.evaluate({"predictions": packed_predicted}, packed) == ner.evaluate(
        {"predictions": predicted}, features
    )


def test_build_packs_validation_by_default_and_training_with_all(tmp_path, tokenizer):
    files = dict(
        train_file=write_jsonl(tmp_path / "train.jsonl", ROWS * 3),
        validation_file=write_jsonl(tmp_path / "dev.jsonl", ROWS * 3),
    )
    default = ner.build(tokenizer, SEQ_LEN, **files)
    assert "segment_ids" not in default.train.arrays and "segment_ids" in default.validation.arrays
    everything = ner.build(tokenizer, SEQ_LEN, pack="all", **files)
    assert "segment_ids" in everything.train.arrays
    assert len(everything.train) < len(default.train) == 6
