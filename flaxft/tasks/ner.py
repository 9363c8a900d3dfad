"""Token classification (NER) on CoNLL-style records: pre-split words and one tag per word.

Each record has `tokens_field` (a list of words, or a string split on whitespace) and
`tags_field` (one tag per word: BIO/IOBES strings such as "B-PER", or integers naming a
Hugging Face `ClassLabel`'s classes). Words are tokenized into sub-words as transformers
tokenizes pre-split words (`is_split_into_words=True`; RoBERTa's byte-level BPE with
`add_prefix_space=True`, see `flaxft.data.tokenizer.words_tokenizer`); only the first
sub-word of each word carries its tag (label -100 elsewhere, as Hugging Face's run_ner
does by default), and the loss ignores the rest and the padding. Words cut off by
truncation to seq_len get no prediction; evaluation counts them as tagged "O" (so their
entities are missed, never silently dropped) and reports how many there were.

Tags: the dataset's ClassLabel names in their order, else the training split's tags
sorted. Batch fields: input_ids, attention_mask, token_type_ids, labels [B, L] int32
(-100: no label) and weights [B] float32 (from the loader); packed rows
(`pack_features`) add segment_ids [B, L] int32 (1..k per example of a row, 0 on padding).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tokenizers import Tokenizer

from flaxft.data import packing
from flaxft.data.features import Features, RowTemplate, stack_rows
from flaxft.data.records import Split, load_splits, require_fields
from flaxft.data.tokenizer import words_tokenizer
from flaxft.errors import InputError
from flaxft.models import EncoderOutput
from flaxft.tasks import metrics as metrics_lib
from flaxft.tasks.task import TaskData

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "segment_ids")
IGNORE = -100


# ----------------------------------------------------------------------------- host side


def build(
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    train_file: str = "",
    validation_file: str = "",
    dataset: str = "",
    tokens_field: str = "tokens",
    tags_field: str = "ner_tags",
    pack: str = "eval",
    max_segments: int = packing.DEFAULT_MAX_SEGMENTS,
) -> TaskData:
    """Reads both splits, takes the tag list from the training split, prepares both.

    pack: which splits to `pack_features`: "eval" and "batches" (validation; with "batches"
    the loader packs each training batch, `pack_batch`), "all" or "none".
    """
    train, validation = load_splits(train_file, validation_file, dataset)
    tags = infer_tags(train, tokens_field, tags_field)
    options = dict(tokens_field=tokens_field, tags_field=tags_field, tags=tags)
    train_features = make_features(train, tokenizer, seq_len, **options)
    validation_features = make_features(validation, tokenizer, seq_len, **options) if validation else None
    if pack == "all":
        train_features = pack_features(train_features, max_segments)
    if pack in ("eval", "batches", "all") and validation_features is not None:
        validation_features = pack_features(validation_features, max_segments)
    return TaskData(train_features, validation_features, num_labels=len(tags), id2label=tuple(tags))


def infer_tags(
    split: Split, tokens_field: str = "tokens", tags_field: str = "ner_tags"
) -> list[str]:
    """The tag list (index = class id): ClassLabel names, else the split's tags sorted.

    Raises:
        InputError: missing columns, integer tags without names, or no tag at all.
    """
    _check_columns(split, tokens_field, tags_field)
    if tags_field in split.class_names:
        return list(split.class_names[tags_field])
    seen = set()
    for index, record in enumerate(split.records):
        for tag in _sequence(record[tags_field], split.source, tags_field, index):
            if not isinstance(tag, str):
                raise InputError(
                    f"{split.source}: tag {tag!r} of record {index} is not a string, and the data "
                    f"has no ClassLabel names for {tags_field!r}; give tags as strings like 'B-PER'"
                )
            seen.add(tag)
    if not seen:
        raise InputError(f"{split.source}: no record has any tag in {tags_field!r}")
    return sorted(seen)


def _check_columns(split: Split, tokens_field: str, tags_field: str) -> None:
    if not split.records:
        raise InputError(f"{split.source} is empty (no records)")
    require_fields(
        split,
        [tokens_field, tags_field],
        {tokens_field: "task.tokens_field", tags_field: "task.tags_field"},
    )


def _sequence(value: Any, source: str, field: str, index: int) -> list:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise InputError(f"{source}: {field!r} of record {index} is not a list: {value!r}")


def make_features(
    split: Split | list[dict[str, Any]],
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    tokens_field: str = "tokens",
    tags_field: str = "ner_tags",
    tags: Sequence[str],
) -> Features:
    """Tokenizes each record's words into one row, the tokenizer's special tokens around
    the sub-words ([CLS] sub-words [SEP], <s> sub-words </s>; truncated to seq_len),
    labelling the first sub-word of each word with its tag id.

    Returns Features: arrays input_ids, attention_mask, token_type_ids, labels [N, L]
    int32; host: word_index [N, L] int32 (the word whose first sub-word sits at each
    position, else -1), words and tags (per example, as given), tag_names, source.

    Raises:
        InputError: missing columns, a tag count that differs from the word count, or a
            tag not in `tags` (naming file, record and tag).
    """
    split = split if isinstance(split, Split) else Split(list(split), "records")
    _check_columns(split, tokens_field, tags_field)
    tags = list(tags)
    tag_ids = {tag: i for i, tag in enumerate(tags)}
    names = split.class_names.get(tags_field)
    template = RowTemplate.of(tokenizer, seq_len)
    budget = template.budget(False)
    (first_position,) = template.text_starts(0)
    words_per_example, tags_per_example = [], []
    for index, record in enumerate(split.records):
        words = [str(w) for w in _sequence(record[tokens_field], split.source, tokens_field, index)]
        example_tags = _sequence(record[tags_field], split.source, tags_field, index)
        if len(words) != len(example_tags):
            raise InputError(
                f"{split.source}: record {index} has {len(words)} words in {tokens_field!r} but "
                f"{len(example_tags)} tags in {tags_field!r}"
            )
        if names is not None:
            example_tags = [
                names[t] if isinstance(t, int) and 0 <= t < len(names) else t for t in example_tags
            ]
        for tag in example_tags:
            if tag not in tag_ids:
                raise InputError(
                    f"{split.source}: tag {tag!r} ({tags_field!r}, record {index}) is not one "
                    f"of the training tags {tags}"
                )
        words_per_example.append(words)
        tags_per_example.append(list(example_tags))
    encodings = words_tokenizer(tokenizer).encode_batch(
        [w if w else [""] for w in words_per_example],
        is_pretokenized=True,
        add_special_tokens=False,
    )
    rows, labels, word_index = [], [], []
    for words, example_tags, encoding in zip(words_per_example, tags_per_example, encodings):
        ids = encoding.ids[:budget]
        word_ids = encoding.word_ids[:budget] if words else [None] * len(ids)
        rows.append(template.row(ids))
        row_labels = np.full(seq_len, IGNORE, np.int32)
        row_words = np.full(seq_len, -1, np.int32)
        previous = None
        for position, word in enumerate(word_ids, start=first_position):
            if word is not None and word != previous:
                row_labels[position] = tag_ids[example_tags[word]]
                row_words[position] = word
            previous = word
        labels.append(row_labels)
        word_index.append(row_words)
    arrays = stack_rows(rows, seq_len)
    arrays["labels"] = np.stack(labels)
    host = {
        "word_index": np.stack(word_index),
        "words": words_per_example,
        "tags": tags_per_example,
        "tag_names": tuple(tags),
        "source": split.source,
    }
    return Features(arrays, host)


def pack_features(features: Features, max_segments: int = packing.DEFAULT_MAX_SEGMENTS) -> Features:
    """Packs unpacked features (from `make_features`) several examples per row of the same
    length (`flaxft.data.packing.plan`); labels move with their tokens.

    Returns Features: input_ids, attention_mask, token_type_ids, segment_ids, labels
    [R, L] int32; host as the input's plus `packing` (where each example went), which
    `evaluate` uses to move predictions back to the unpacked rows.
    """
    arrays = features.arrays
    if "segment_ids" in arrays:
        raise ValueError("features are already packed")
    placed, packed = packing.pack_inputs(arrays, arrays["input_ids"].shape[1], max_segments)
    packed["labels"] = packing.pack_tokens(arrays["labels"], placed, fill=IGNORE)
    return Features(packed, {**features.host, "packing": placed})


def evaluate(
    outputs: dict[str, np.ndarray], features: Features
) -> tuple[dict[str, float], list[dict]]:
    """Entity-level precision, recall and F1 (seqeval's default, see `metrics.entity_scores`),
    per-type F1, word accuracy, and the number of words truncation left unpredicted.

    outputs: "predictions" [N, L] class ids (from `eval_outputs`) or "logits" [N, L, C];
    for packed features [R, L] or [R, L, C].
    Predictions, per example: {"index", "tokens", "tags", "predicted_tags"}.
    """
    if "predictions" in outputs:
        predicted_ids = np.asarray(outputs["predictions"])
    else:
        predicted_ids = np.asarray(outputs["logits"]).argmax(-1)
    word_index = features.host["word_index"]
    if "packing" in features.host:
        placed = features.host["packing"]
        if predicted_ids.shape != (placed.num_rows, placed.seq_len):
            raise ValueError(
                f"predictions {predicted_ids.shape} do not match the packed features "
                f"{(placed.num_rows, placed.seq_len)}"
            )
        predicted_ids = packing.unpack_tokens(predicted_ids, placed, word_index.shape[1])
    if predicted_ids.shape != word_index.shape:
        raise ValueError(
            f"predictions {predicted_ids.shape} do not match the features {word_index.shape}"
        )
    names = features.host["tag_names"]
    gold, predicted, predictions = [], [], []
    correct = total = unpredicted = 0
    for i, (words, tags) in enumerate(zip(features.host["words"], features.host["tags"])):
        example = ["O"] * len(words)
        positions = np.flatnonzero(word_index[i] >= 0)
        for position in positions.tolist():
            example[word_index[i, position]] = names[predicted_ids[i, position]]
        unpredicted += len(words) - len(positions)
        correct += sum(p == t for p, t in zip(example, tags))
        total += len(words)
        gold.append(tags)
        predicted.append(example)
        predictions.append({"index": i, "tokens": words, "tags": tags, "predicted_tags": example})
    scores = metrics_lib.entity_scores(gold, predicted)
    scores["accuracy"] = correct / total if total else 0.0
    scores["unpredicted_words"] = float(unpredicted)
    return scores, predictions


# ----------------------------------------------------------------------------- the task


@dataclasses.dataclass(frozen=True)
class NER:
    """Token classification; fields are the config.task keys it reads."""

    head: ClassVar[str] = "token_classification"

    tokens_field: str = "tokens"
    tags_field: str = "ner_tags"
    pack: str = "batches"
    max_segments: int = packing.DEFAULT_MAX_SEGMENTS

    def build(self, tokenizer: Tokenizer, seq_len: int, *, train_file: str, validation_file: str,
              dataset: str) -> TaskData:
        """Both splits' features (`build`)."""
        return build(tokenizer, seq_len, train_file=train_file, validation_file=validation_file,
                     dataset=dataset, **dataclasses.asdict(self))

    def evaluate(self, outputs: dict[str, np.ndarray], features: Features) -> tuple[dict[str, float], list[dict]]:
        return evaluate(outputs, features)

    def pack_batch(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One training batch's unpacked rows ({field: [b, L]}) packed (`pack_features`):
        the packed batch fields, [R, L] with R <= b."""
        return pack_features(Features(arrays), self.max_segments).arrays

    def model_inputs(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The model call's keyword inputs (segment_ids when packed)."""
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}

    def normalizers(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Whole-batch denominator: the number of labelled tokens (at least 1)."""
        return {"tokens": jnp.maximum(_token_weights(batch).sum(), 1.0)}

    def loss_and_metrics(
        self, out: EncoderOutput, batch: dict[str, jax.Array], norm: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Token cross-entropy over labelled first sub-words, and token accuracy; each this
        batch's share of the whole-batch value. out.logits [B, L, C], batch["labels"] [B, L]."""
        labels = batch["labels"]
        weights = _token_weights(batch)
        ce = optax.softmax_cross_entropy_with_integer_labels(
            out.logits.astype(jnp.float32), jnp.maximum(labels, 0)
        )
        loss = jnp.sum(ce * weights) / norm["tokens"]
        correct = jnp.argmax(out.logits, -1) == labels
        return loss, {"loss": loss, "accuracy": jnp.sum(correct * weights) / norm["tokens"]}

    def eval_outputs(self, out: EncoderOutput, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """What `evaluate` needs: predicted class ids [B, L] int32 (not the [B, L, C] logits)."""
        return {"predictions": jnp.argmax(out.logits, -1).astype(jnp.int32)}


def _token_weights(batch: dict[str, jax.Array]) -> jax.Array:
    """[B, L]: 1 on labelled first sub-words of real rows."""
    weights = (batch["labels"] >= 0).astype(jnp.float32)
    if "weights" in batch:
        weights = weights * batch["weights"][:, None]
    return weights
