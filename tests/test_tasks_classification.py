"""Sequence classification: preparation, labels, packing, loss math and evaluation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from flaxft.data import Split, load_tokenizer, padding_fraction
from flaxft.errors import InputError
from flaxft.models import FAMILIES, EncoderOutput
from flaxft.tasks import classification as cls

SEQ_LEN = 32


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def sentiment_rows(n=24, offset=0):
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    return [
        {
            "text": f"the film was {words[i % 6]} " + "really " * (i % 7),
            "label": "pos" if i % 6 < 3 else "neg",
        }
        for i in range(offset, offset + n)
    ]


def test_single_text_rows_match_the_tokenizer(tokenizer):
    split = Split([{"text": "Hello world", "label": "a"}], "x")
    features = cls.make_features(split, tokenizer, SEQ_LEN, labels=["a"])
    expected = tokenizer.encode("Hello world").ids  # [CLS] hello world [SEP] via the post-processor
    row = features.arrays["input_ids"][0]
    assert row[: len(expected)].tolist() == expected
    assert (row[len(expected) :] == 0).all()
    assert features.arrays["attention_mask"][0].sum() == len(expected)
    assert features.arrays["input_ids"].dtype == np.int32 and features.arrays[
        "input_ids"
    ].shape == (1, SEQ_LEN)


def test_pairs_get_token_types_and_longest_first_truncation(tokenizer):
    long = "word " * 50
    split = Split(
        [
            {"a": "a short premise", "b": "and a hypothesis", "label": 0},
            {"a": long, "b": "tiny", "label": 1},
        ],
        "x",
    )
    features = cls.make_features(split, tokenizer, SEQ_LEN, text_fields="a,b", labels=[0, 1])
    expected = tokenizer.encode("a short premise", "and a hypothesis")
    n = len(expected.ids)
    assert features.arrays["input_ids"][0, :n].tolist() == expected.ids
    assert features.arrays["token_type_ids"][0, :n].tolist() == expected.type_ids
    # The long first text is cut, the short second one kept whole: [CLS] 28 x word [SEP] tiny [SEP]
    row = features.arrays["input_ids"][1]
    assert features.arrays["attention_mask"][1].all()
    assert row[-2] == tokenizer.token_to_id("tiny") and row[-1] == tokenizer.token_to_id("[SEP]")
    assert features.arrays["token_type_ids"][1].sum() == 2


def test_rows_match_transformers_for_roberta_and_xlmr(roberta_or_xlmr_dir):
    """<s> a </s> and <s> a </s></s> b </s> (all type 0), truncated longest-first and padded
    with <pad>, as transformers builds them; packed rows classify at each example's <s>."""
    tokenizer = load_tokenizer(str(roberta_or_xlmr_dir))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(roberta_or_xlmr_dir))
    rows = [
        {"a": "a short premise", "b": "and a hypothesis", "label": 0},
        {"a": "word " * 50, "b": "tiny", "label": 1},
    ]
    for fields in ("a", "a,b"):
        features = cls.make_features(Split(rows, "x"), tokenizer, SEQ_LEN, text_fields=fields, labels=[0, 1])
        expected = hf_tokenizer(
            *([row[field] for row in rows] for field in fields.split(",")), truncation="longest_first",
            max_length=SEQ_LEN, padding="max_length", return_token_type_ids=True,
        )
        for key in ("input_ids", "token_type_ids", "attention_mask"):
            assert features.arrays[key].tolist() == expected[key], (fields, key)
    packed = cls.pack_features(features)
    slots = packed.arrays["label_weights"] > 0
    first_tokens = np.take_along_axis(packed.arrays["input_ids"], packed.arrays["cls_positions"], 1)
    assert slots.sum() == 2 and (first_tokens[slots] == tokenizer.token_to_id("<s>")).all()


def test_string_int_and_float_labels(tmp_path, tokenizer):
    strings = Split([{"text": "x", "label": v} for v in ["neg", "pos", "neutral", "pos"]], "s")
    labels = cls.infer_labels(strings)
    assert labels == ["neg", "neutral", "pos"]
    assert cls.make_features(strings, tokenizer, 8, labels=labels).arrays["labels"].tolist() == [
        0,
        2,
        1,
        2,
    ]
    ints = Split([{"text": "x", "label": v} for v in [10, 2, 2]], "i")
    assert cls.infer_labels(ints) == [2, 10]  # numeric order, not "10" < "2"
    floats = Split([{"text": "x", "label": v} for v in [0.5, 3, 4.25]], "f")
    assert cls.infer_labels(floats) is None
    features = cls.make_features(floats, tokenizer, 8, labels=None)
    assert features.arrays["labels"].dtype == np.float32
    np.testing.assert_allclose(features.arrays["labels"], [0.5, 3.0, 4.25])


def test_build_from_csv_files(tmp_path, tokenizer):
    (tmp_path / "train.csv").write_text(
        "sentence,label\nit is good,pos\nit is bad,neg\nso good,pos\n"
    )
    (tmp_path / "dev.csv").write_text("sentence,label\nnot good,neg\n")
    data = cls.build(
        tokenizer,
        SEQ_LEN,
        train_file=str(tmp_path / "train.csv"),
        validation_file=str(tmp_path / "dev.csv"),
        text_fields="sentence",
    )
    assert data.num_labels == 2 and data.id2label == ("neg", "pos")
    assert data.train.arrays["labels"].tolist() == [1, 0, 1]  # training rows stay unpacked
    assert data.validation.arrays["labels"][:, 0].tolist() == [0]  # validation packed by default
    assert data.validation.arrays["label_weights"].sum() == 1
    assert FAMILIES["bert"].architecture(cls.Classification.head).__name__ == "BertForSequenceClassification"


def test_build_from_parquet_regression(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"sentence1": "a man", "sentence2": "a person", "label": 4.2},
        {"sentence1": "a cat", "sentence2": "the sky", "label": 0.0},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    data = cls.build(
        tokenizer,
        SEQ_LEN,
        train_file=str(tmp_path / "train.parquet"),
        validation_file=str(tmp_path / "train.parquet"),
        dataset="glue:stsb",
        pack="none",
    )
    assert data.num_labels == 1 and data.id2label == ()
    metrics, predictions = cls.evaluate({"logits": np.array([[4.0], [0.5]])}, data.validation)
    assert set(metrics) == {"pearson", "spearmanr", "combined_score"}
    assert predictions[0] == {"index": 0, "label": pytest.approx(4.2), "prediction": 4.0}


def test_bad_inputs_name_file_column_and_label(tmp_path, tokenizer):
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]
    )
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "c", "label": "neutral"}])
    with pytest.raises(
        InputError, match=r"dev.jsonl: label 'neutral' .* not one of the training labels"
    ):
        cls.build(tokenizer, SEQ_LEN, train_file=train, validation_file=dev)
    with pytest.raises(InputError, match=r"train.jsonl: no column 'sentence' \(task.text_fields\)"):
        cls.build(tokenizer, SEQ_LEN, train_file=train, text_fields="sentence")
    with pytest.raises(InputError, match=r"no column 'target' \(task.label_field\)"):
        cls.build(tokenizer, SEQ_LEN, train_file=train, label_field="target")
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(InputError, match="empty.csv.* is empty"):
        cls.build(tokenizer, SEQ_LEN, train_file=str(tmp_path / "empty.csv"))
    mixed = write_jsonl(
        tmp_path / "mixed.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "x"}]
    )
    with pytest.raises(InputError, match="mix types"):
        cls.build(tokenizer, SEQ_LEN, train_file=mixed)
    with pytest.raises(InputError, match="one or two columns"):
        cls.build(tokenizer, SEQ_LEN, train_file=train, text_fields="a,b,c")
    none_text = write_jsonl(tmp_path / "none.jsonl", [{"text": None, "label": "pos"}])
    with pytest.raises(InputError, match="column 'text' of record 0 is empty"):
        cls.build(tokenizer, SEQ_LEN, train_file=none_text)


def test_glue_defaults_and_metric_choice():
    assert cls.glue_task("glue:sst2") == "sst2"
    assert cls.glue_task("nyu-mll/glue:mrpc") == "mrpc"
    assert cls.glue_task("imdb") is None and cls.glue_task("") is None
    assert cls.GLUE_TEXT_FIELDS["qnli"] == ("question", "sentence")


def test_evaluate_metrics_and_predictions(tokenizer):
    rows = sentiment_rows(6)
    labels = cls.infer_labels(Split(rows, "x"))
    features = cls.make_features(Split(rows, "x"), tokenizer, SEQ_LEN, labels=labels)
    gold = features.arrays["labels"]
    logits = np.eye(2)[gold]
    logits[0] = logits[0, ::-1]  # one mistake
    metrics, predictions = cls.evaluate({"logits": logits}, features)
    assert metrics["accuracy"] == pytest.approx(5 / 6)
    assert set(metrics) == {"accuracy", "macro_f1"}
    assert predictions[0]["label"] != predictions[0]["prediction"]
    assert [p["label"] for p in predictions] == [r["label"] for r in rows]
    assert predictions[0]["probability"] == pytest.approx(np.e / (np.e + 1))  # softmax([1, 0])
    features.host["dataset"] = "glue:cola"
    assert set(cls.evaluate({"logits": logits}, features)[0]) == {"matthews_correlation"}
    features.host["dataset"] = "glue:qqp"
    assert set(cls.evaluate({"logits": logits}, features)[0]) == {
        "accuracy",
        "f1",
        "combined_score",
    }


def test_pack_layout(tokenizer):
    rows = sentiment_rows(24)
    features = cls.make_features(Split(rows, "x"), tokenizer, SEQ_LEN, labels=["neg", "pos"])
    packed = cls.pack_features(features, max_segments=4)
    arrays, index = packed.arrays, packed.host["example_index"]
    assert arrays["cls_positions"].shape == arrays["labels"].shape == index.shape == (len(index), 4)
    assert sorted(index[index >= 0].tolist()) == list(range(24))  # every example exactly once
    lengths = features.arrays["attention_mask"].sum(1)
    for r in range(len(index)):
        start = 0
        for k, example in enumerate(index[r].tolist()):
            if example < 0:
                assert arrays["label_weights"][r, k] == 0
                continue
            n = lengths[example]
            assert arrays["cls_positions"][r, k] == start
            np.testing.assert_array_equal(
                arrays["input_ids"][r, start : start + n], features.arrays["input_ids"][example, :n]
            )
            assert (arrays["segment_ids"][r, start : start + n] == k + 1).all()
            assert arrays["labels"][r, k] == features.arrays["labels"][example]
            assert arrays["label_weights"][r, k] == 1
            start += n
        assert (arrays["segment_ids"][r, start:] == 0).all() and (
            arrays["input_ids"][r, start:] == 0
        ).all()
    np.testing.assert_array_equal(arrays["attention_mask"], arrays["segment_ids"] > 0)
    assert padding_fraction(arrays["attention_mask"]) < padding_fraction(
        features.arrays["attention_mask"]
    )
    again = cls.pack_features(features, max_segments=4)
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], again.arrays[key])  # deterministic


def packed_like(logits, packed):
    """Per-example logits [N, C] placed at each example's slot of the packed rows: [R, K, C]."""
    index = packed.host["example_index"]
    out = np.zeros((*index.shape, logits.shape[-1]), logits.dtype)
    out[index >= 0] = logits[index[index >= 0]]
    return out


def test_packed_and_unpacked_give_the_same_metrics_for_the_same_logits(tokenizer):
    rows = sentiment_rows(30)
    features = cls.make_features(Split(rows, "x"), tokenizer, SEQ_LEN, labels=["neg", "pos"])
    packed = cls.pack_features(features, max_segments=5)
    logits = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
    assert cls.evaluate({"logits": logits}, features) == cls.evaluate(
        {"logits": packed_like(logits, packed)}, packed
    )


def jax_batch(arrays, weights=None):
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}
    n = len(arrays["input_ids"])
    batch["weights"] = (
        jnp.ones(n, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    )
    return batch


@jax.jit
def _loss(batch, logits):
    return cls.Classification().loss_and_metrics(
        EncoderOutput(last_hidden_state=None, logits=logits), batch, cls.Classification().normalizers(batch)
    )


def loss(batch, logits):
    return _loss(batch, jnp.asarray(logits))


def test_loss_is_mean_cross_entropy_and_ignores_padding_rows():
    labels = np.array([0, 1, 1, 0], np.int32)
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [9.0, -9.0]], np.float32)
    arrays = {"input_ids": np.zeros((4, 4), np.int32), "labels": labels}
    value, metrics = loss(jax_batch(arrays, [1, 1, 1, 0]), logits)
    log_probs = jax.nn.log_softmax(logits)
    expected = -np.mean([log_probs[0, 0], log_probs[1, 1], log_probs[2, 1]])
    assert float(value) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(2 / 3)


def test_regression_loss_is_mse():
    arrays = {
        "input_ids": np.zeros((3, 4), np.int32),
        "labels": np.array([1.0, 2.0, 5.0], np.float32),
    }
    value, metrics = loss(jax_batch(arrays), np.array([[1.5], [2.0], [3.0]], np.float32))
    assert float(value) == pytest.approx((0.25 + 0 + 4) / 3)
    assert "mse" in metrics


def test_microbatch_losses_sum_to_the_whole_batch_loss():
    rng = np.random.default_rng(1)
    arrays = {
        "input_ids": np.zeros((8, 4), np.int32),
        "labels": rng.integers(0, 3, 8).astype(np.int32),
    }
    logits = rng.normal(size=(8, 3)).astype(np.float32)
    batch = jax_batch(arrays, [1, 1, 1, 1, 1, 1, 0, 0])
    norm = cls.Classification().normalizers(batch)
    loss_fn = jax.jit(
        lambda logits, batch, norm: cls.Classification().loss_and_metrics(
            EncoderOutput(None, logits=logits), batch, norm
        )[0]
    )
    whole = loss_fn(jnp.asarray(logits), batch, norm)
    parts = sum(
        loss_fn(jnp.asarray(logits[i::2]), {k: v[i::2] for k, v in batch.items()}, norm)
        for i in range(2)
    )
    assert float(parts) == pytest.approx(float(whole), rel=1e-6)


def test_packed_loss_equals_unpacked_loss_for_the_same_logits(tokenizer):
    rows = sentiment_rows(20)
    features = cls.make_features(Split(rows, "x"), tokenizer, SEQ_LEN, labels=["neg", "pos"])
    packed = cls.pack_features(features, max_segments=4)
    logits = np.random.default_rng(2).normal(size=(20, 2)).astype(np.float32)
    unpacked_loss, unpacked_metrics = loss(jax_batch(features.arrays), logits)
    packed_loss, packed_metrics = loss(jax_batch(packed.arrays), packed_like(logits, packed))
    assert float(packed_loss) == pytest.approx(float(unpacked_loss), rel=1e-6)
    assert float(packed_metrics["accuracy"]) == pytest.approx(float(unpacked_metrics["accuracy"]))
    assert set(cls.Classification().model_inputs(jax_batch(packed.arrays))) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "segment_ids",
        "cls_positions",
    }
    assert set(cls.Classification().model_inputs(jax_batch(features.arrays))) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
    }
    with pytest.raises(ValueError, match="cls_positions"):
        loss(
            jax_batch(packed.arrays), np.zeros((len(packed), 2), np.float32)
        )  # a model without the change


def test_packing_matches_the_model_when_pooling_at_cls_positions(tokenizer):
    """What the model-side change must compute: the encoder over packed rows (segment ids
    restart positions and block attention), then the pooler and classifier at each
    cls_position, gives each example the logits it gets alone in its own row."""
    import flax.linen as nn

    from flaxft.models import BertConfig, BertForSequenceClassification, init_params

    vocab = 512  # token ids are folded into a small vocabulary: only the layout matters here
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ_LEN,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    params = jax.jit(lambda key: nn.meta.unbox(init_params(model, key, SEQ_LEN)))(jax.random.key(0))
    rows = [
        {"a": r["text"], "b": "second part " * (i % 3), "label": r["label"]}
        for i, r in enumerate(sentiment_rows(11))
    ]
    features = cls.make_features(
        Split(rows, "x"), tokenizer, SEQ_LEN, text_fields="a,b", labels=["neg", "pos"]
    )
    packed = cls.pack_features(features, max_segments=4)
    assert (packed.host["example_index"] >= 0).sum(1).max() > 1  # some rows really are packed
    for f in (features, packed):
        f.arrays["input_ids"] %= vocab

    @jax.jit
    def logits(params, unpacked_batch, packed_batch):
        alone = model.apply({"params": params}, **cls.Classification().model_inputs(unpacked_batch)).logits
        # The head change, written out:
        inputs = cls.Classification().model_inputs(packed_batch)
        cls_positions = inputs.pop("cls_positions")
        hidden = model.apply({"params": params}, **inputs).last_hidden_state
        at_cls = jnp.take_along_axis(hidden, cls_positions[:, :, None], axis=1)
        pooled = jnp.tanh(
            at_cls @ params["bert"]["pooler"]["kernel"] + params["bert"]["pooler"]["bias"]
        )
        return alone, pooled @ params["classifier"]["kernel"] + params["classifier"]["bias"]

    alone, together = logits(params, jax_batch(features.arrays), jax_batch(packed.arrays))
    index = packed.host["example_index"]
    np.testing.assert_allclose(
        np.asarray(together)[index >= 0], np.asarray(alone)[index[index >= 0]], atol=2e-5
    )


def test_demo_padding_fraction_drops_with_packing(tokenizer):
    from flaxft.tasks import demo_data

    train, _ = demo_data.classification_records()
    labels = cls.infer_labels(Split(train, "demo"))
    features = cls.make_features(Split(train, "demo"), tokenizer, 128, labels=labels)
    packed = cls.pack_features(features)
    unpacked_padding = padding_fraction(features.arrays["attention_mask"])
    packed_padding = padding_fraction(packed.arrays["attention_mask"])
    print(
        f"demo classification, seq_len 128: padding {unpacked_padding:.1%} unpacked "
        f"({len(features)} rows), {packed_padding:.1%} packed ({len(packed)} rows)"
    )
    assert packed_padding < unpacked_padding / 4
    assert len(packed) < len(features) * 0.7


def test_works_with_a_flaxft_trained_wordpiece_tokenizer(tmp_path):
    from flaxft.data import train_wordpiece

    rows = sentiment_rows(12)
    tokenizer = train_wordpiece([r["text"] for r in rows], 60, str(tmp_path / "tok"))
    features = cls.make_features(Split(rows, "x"), tokenizer, 16, labels=["neg", "pos"])
    ids = features.arrays["input_ids"]
    lengths = features.arrays["attention_mask"].sum(1)
    assert (ids[:, 0] == 2).all()  # [CLS]
    assert (ids[np.arange(len(ids)), lengths - 1] == 3).all()  # [SEP] closes every row
    assert ids.max() < 60


def test_a_packed_training_batch_has_the_unpacked_batchs_loss_and_gradients(tokenizer):
    """task.pack="batches" keeps the recipe: a step's examples packed into fewer rows give
    the same loss and the same gradients as the same examples one per row (dropout off)."""
    import flax.linen as nn

    from flaxft.data import FinetuneLoader, PackedFinetuneLoader
    from flaxft.models import BertConfig, BertForSequenceClassification, init_params

    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=SEQ_LEN,
                        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    params = jax.jit(lambda key: nn.meta.unbox(init_params(model, key, SEQ_LEN)))(jax.random.key(0))
    features = cls.make_features(Split(sentiment_rows(24), "x"), tokenizer, SEQ_LEN, labels=["neg", "pos"])
    task = cls.Classification(max_segments=4)
    unpacked = FinetuneLoader(features.arrays, 8, seed=0).get_batch(1)
    packed_loader = PackedFinetuneLoader(features.arrays, 8, seed=0, pack=task.pack_batch, num_steps=3,
                                         row_multiple=4)
    packed = packed_loader.get_batch(1)
    assert packed_loader.rows < 8 and packed["weights"].sum() < packed_loader.rows  # fewer rows, and a filler

    @jax.jit
    @jax.value_and_grad
    def loss(params, batch):
        out = model.apply({"params": params}, **task.model_inputs(batch))
        return task.loss_and_metrics(out, batch, task.normalizers(batch))[0]

    (value, grads), (packed_value, packed_grads) = (loss(params, jax_batch(b, b["weights"])) for b in (unpacked, packed))
    assert float(packed_value) == pytest.approx(float(value), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), packed_grads, grads)
