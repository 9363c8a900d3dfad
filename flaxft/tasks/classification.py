"""Sequence classification and regression (GLUE-style), optionally with packed rows.

Host side: `build` (read splits, infer labels, tokenize), `make_features` (records ->
rows), `pack_features` (several short examples per row), `evaluate` (model outputs ->
metrics and per-example predictions). `Classification` is the task as a fine-tuning run
uses it: its config keys, and the device side (`flaxft.contracts.Task`).

Labels: strings (or booleans) -> classes in sorted order; integers -> classes in sorted
order, or the dataset's `ClassLabel` names in their own order when it has them; floats
-> regression with one output (mean squared error). Validation labels must be among
the training labels.

Batch fields, unpacked (N = B rows = B examples, L = seq_len):
    input_ids, attention_mask, token_type_ids [B, L] int32; labels [B] int32 (float32
    for regression); weights [B] float32 (added by the loader; 0 on padding rows).
Packed (K = max_segments examples per row at most):
    input_ids, attention_mask, token_type_ids, segment_ids [B, L] int32 (segment ids
    1..k per row, 0 on padding); cls_positions [B, K] int32 (each example's first token,
    its [CLS] or <s>, in its row; 0 on empty slots); labels [B, K]; label_weights [B, K]
    float32 (1 on filled slots); weights [B]. The model must return logits [B, K, C] for
    cls_positions: the pooler and classifier applied to the hidden state at each slot's
    first token.
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
from flaxft.data.features import Features, RowTemplate, stack_rows, truncate_pair
from flaxft.data.records import Split, load_splits, require_fields, split_fields, text_value
from flaxft.data.tokenizer import plain_tokenizer
from flaxft.errors import InputError
from flaxft.models import EncoderOutput
from flaxft.tasks import metrics as metrics_lib
from flaxft.tasks.task import TaskData

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "segment_ids", "cls_positions")

# The text columns of each GLUE task in Hugging Face's `glue` dataset.
GLUE_TEXT_FIELDS = {
    "cola": ("sentence",),
    "sst2": ("sentence",),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "mnli_matched": ("premise", "hypothesis"),
    "mnli_mismatched": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
    "ax": ("premise", "hypothesis"),
}


def glue_task(dataset: str) -> str | None:
    """The GLUE task `dataset` names ("glue:sst2", "nyu-mll/glue:sst2" -> "sst2"), else None."""
    name, _, config = (dataset or "").partition(":")
    if name.rstrip("/").split("/")[-1].lower() == "glue" and config.lower() in GLUE_TEXT_FIELDS:
        return config.lower()
    return None


# ----------------------------------------------------------------------------- host side


def build(
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    train_file: str = "",
    validation_file: str = "",
    dataset: str = "",
    text_fields: str | Sequence[str] = "",
    label_field: str = "label",
    pack: str = "eval",
    max_segments: int = packing.DEFAULT_MAX_SEGMENTS,
) -> TaskData:
    """Reads both splits (`flaxft.data.records.load_splits`), infers the labels from the
    training split and prepares the features of both.

    text_fields: one or two columns ("sentence1,sentence2"); default: the GLUE task's
    columns when `dataset` is a GLUE task, else "text".
    pack: which splits to `pack_features`: "eval" and "batches" (validation; with "batches"
    the loader packs each training batch, `pack_batch`), "all" or "none".
    """
    train, validation = load_splits(train_file, validation_file, dataset)
    fields = split_fields(text_fields) or list(GLUE_TEXT_FIELDS.get(glue_task(dataset), ("text",)))
    labels = infer_labels(train, label_field)
    options = dict(text_fields=fields, label_field=label_field, labels=labels, dataset=dataset)
    train_features = make_features(train, tokenizer, seq_len, **options)
    validation_features = make_features(validation, tokenizer, seq_len, **options) if validation else None
    if pack == "all":
        train_features = pack_features(train_features, max_segments=max_segments)
    if pack in ("eval", "batches", "all") and validation_features is not None:
        validation_features = pack_features(validation_features, max_segments=max_segments)
    names = tuple(str(label) for label in labels) if labels is not None else ()
    return TaskData(train_features, validation_features, num_labels=len(names) or 1, id2label=names)


def infer_labels(split: Split, label_field: str = "label") -> list | None:
    """The class list of a training split (index = class id), or None for regression.

    Raises:
        InputError: the column is missing, a label is empty, or labels mix types.
    """
    require_fields(split, [label_field], {label_field: "task.label_field"})
    if label_field in split.class_names:
        return list(split.class_names[label_field])
    values = [record[label_field] for record in split.records]
    kinds = set()
    for index, value in enumerate(values):
        if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
            raise InputError(f"{split.source}: record {index} has no label ({label_field!r})")
        if isinstance(value, (bool, np.bool_)):
            kinds.add("bool")
        elif isinstance(value, (int, np.integer)):
            kinds.add("int")
        elif isinstance(value, (float, np.floating)):
            kinds.add("float")
        elif isinstance(value, str):
            kinds.add("str")
        else:
            raise InputError(
                f"{split.source}: label {value!r} of record {index} is not a string or number"
            )
    if kinds <= {"int", "float"} and "float" in kinds:
        return None
    if len(kinds) > 1:
        raise InputError(
            f"{split.source}: labels in {label_field!r} mix types {sorted(kinds)}; use one type "
            "(strings or integers for classes, floats for regression)"
        )
    return sorted(set(values))


def make_features(
    split: Split | list[dict[str, Any]],
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    text_fields: str | Sequence[str] = "text",
    label_field: str = "label",
    labels: list | None = None,
    dataset: str = "",
) -> Features:
    """Tokenizes every record into one row laid out as the tokenizer lays out one text or
    a pair ([CLS] a [SEP] (b [SEP]), <s> a </s> (</s> b </s>)), truncated longest-first
    to `seq_len` and padded.

    labels: the class list from `infer_labels` (None: regression, float labels).
    Returns Features: arrays input_ids, attention_mask, token_type_ids [N, L] int32 and
    labels [N] (int32 class ids, or float32); host: example_index [N], example_labels
    [N], label_names, dataset, source.

    Raises:
        InputError: a missing column (naming file and column), an empty text, or a label
            outside `labels` (naming file, record and label).
    """
    split = split if isinstance(split, Split) else Split(list(split), "records")
    if not split.records:
        raise InputError(f"{split.source} is empty (no records)")
    fields = split_fields(text_fields)
    if not 1 <= len(fields) <= 2:
        raise InputError(f"task.text_fields must name one or two columns, got {fields}")
    require_fields(
        split,
        [*fields, label_field],
        {**{f: "task.text_fields" for f in fields}, label_field: "task.label_field"},
    )
    template = RowTemplate.of(tokenizer, seq_len)
    tokenizer = plain_tokenizer(tokenizer)
    encoded = [
        tokenizer.encode_batch(
            [text_value(r[field], split.source, field, i) for i, r in enumerate(split.records)],
            add_special_tokens=False,
        )
        for field in fields
    ]
    rows = []
    for i in range(len(split.records)):
        first = encoded[0][i].ids
        if len(fields) == 1:
            rows.append(template.row(first[: template.budget(False)]))
        else:
            second = encoded[1][i].ids
            len_a, len_b = truncate_pair(len(first), len(second), template.budget(True))
            rows.append(template.row(first[:len_a], second[:len_b]))
    arrays = stack_rows(rows, seq_len)
    label_ids = _label_ids(split, label_field, labels)
    arrays["labels"] = label_ids
    host = {
        "example_index": np.arange(len(rows)),
        "example_labels": label_ids,
        "label_names": None if labels is None else tuple(str(label) for label in labels),
        "dataset": dataset,
        "source": split.source,
    }
    return Features(arrays, host)


def _label_ids(split: Split, label_field: str, labels: list | None) -> np.ndarray:
    values = [record[label_field] for record in split.records]
    if labels is None:
        out = []
        for index, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise InputError(
                    f"{split.source}: label {value!r} of record {index} is not a number (the "
                    "training labels are floats: regression)"
                )
            out.append(float(value))
        return np.asarray(out, np.float32)
    if label_field in split.class_names:  # ClassLabel ints index the names directly
        names = split.class_names[label_field]
        index = {name: i for i, name in enumerate(labels)}
        ids = []
        for i, value in enumerate(values):
            if (
                not isinstance(value, (int, np.integer))
                or not 0 <= value < len(names)
                or names[value] not in index
            ):
                raise InputError(
                    f"{split.source}: label {value!r} of record {i} is not one of the training "
                    f"labels {labels}"
                )
            ids.append(index[names[value]])
        return np.asarray(ids, np.int32)
    index = {_key(label): i for i, label in enumerate(labels)}
    ids = []
    for i, value in enumerate(values):
        key = _key(value)
        if key not in index:
            raise InputError(
                f"{split.source}: label {value!r} ({label_field!r}, record {i}) is not one of the "
                f"training labels {labels}"
            )
        ids.append(index[key])
    return np.asarray(ids, np.int32)


def _key(label: Any) -> tuple[str, Any]:
    """Labels compare by type and value: 1 and "1" and True are different classes."""
    if isinstance(label, (bool, np.bool_)):
        return ("bool", bool(label))
    if isinstance(label, (int, np.integer)):
        return ("int", int(label))
    return (type(label).__name__, label)


def pack_features(
    features: Features, seq_len: int | None = None, max_segments: int = packing.DEFAULT_MAX_SEGMENTS
) -> Features:
    """Packs unpacked features (from `make_features`) several examples per row
    (`flaxft.data.packing.plan`). Each example keeps its tokens and token types; the
    position of its first token ([CLS] or <s>) goes to `cls_positions` and its label to
    `labels` at its slot.

    seq_len: the packed row length (default: that of the features; may be larger).
    Returns Features with the packed batch fields of the module docstring; host as the
    input's, with example_index [R, K] (-1 on empty slots).
    """
    arrays = features.arrays
    if "cls_positions" in arrays:
        raise ValueError("features are already packed")
    seq_len = seq_len or arrays["input_ids"].shape[1]
    placed, packed = packing.pack_inputs(arrays, seq_len, max_segments)
    packed["cls_positions"] = packing.slots(placed.start.astype(np.int32), placed, max_segments)
    packed["labels"] = packing.slots(arrays["labels"], placed, max_segments)
    ones = np.ones(len(features), np.float32)
    packed["label_weights"] = packing.slots(ones, placed, max_segments)
    example_index = packing.slots(features.host["example_index"], placed, max_segments, fill=-1)
    return Features(packed, {**features.host, "example_index": example_index})


def evaluate(
    outputs: dict[str, np.ndarray], features: Features
) -> tuple[dict[str, float], list[dict]]:
    """Metrics and per-example predictions from the model's outputs on `features`.

    outputs["logits"]: [N, C] for unpacked features (row order), or [R, K, C] for packed
    ones (padding rows of the last batch already dropped, see `concat_outputs`).
    Metrics: GLUE's for a GLUE `dataset` (see `metrics.glue_metrics`); otherwise
    accuracy and macro_f1 (classes), or mse, pearson and spearmanr (regression).
    Predictions, in example order: {"index", "label", "prediction"} (class names, or
    floats for regression), plus for classes "probability" (the softmax probability of
    the predicted class).
    """
    logits = _per_example(np.asarray(outputs["logits"]), features)
    gold = features.host["example_labels"]
    names = features.host["label_names"]
    regression = names is None
    predicted = logits[:, 0].astype(np.float64) if regression else logits.argmax(-1)
    task = glue_task(features.host.get("dataset", ""))
    if task is not None:
        scores = metrics_lib.glue_metrics(task, predicted, gold)
    elif regression:
        scores = {
            "mse": float(np.mean((predicted - gold) ** 2)),
            "pearson": metrics_lib.pearson(predicted, gold),
            "spearmanr": metrics_lib.spearman(predicted, gold),
        }
    else:
        scores = {
            "accuracy": metrics_lib.accuracy(predicted, gold),
            "macro_f1": metrics_lib.macro_f1(predicted, gold),
        }
    if regression:
        predictions = [
            {"index": i, "label": float(g), "prediction": float(p)}
            for i, (g, p) in enumerate(zip(gold, predicted))
        ]
    else:
        predictions = [
            {"index": i, "label": names[g], "prediction": names[p], "probability": float(q)}
            for i, (g, p, q) in enumerate(
                zip(gold.tolist(), predicted.tolist(), _softmax_max(logits))
            )
        ]
    return scores, predictions


def _softmax_max(logits: np.ndarray) -> np.ndarray:
    """[N, C] logits -> [N] softmax probability of the largest."""
    logits = logits.astype(np.float64)
    return 1.0 / np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)


def _per_example(logits: np.ndarray, features: Features) -> np.ndarray:
    """[N, C] logits in example order from unpacked [N, C] or packed [R, K, C] outputs."""
    index = features.host["example_index"]
    num_examples = len(features.host["example_labels"])
    if logits.shape[:-1] != index.shape:
        raise ValueError(
            f"logits {logits.shape} do not match the features' layout {index.shape} + [C]"
        )
    filled = index >= 0
    out = np.zeros((num_examples, logits.shape[-1]), logits.dtype)
    out[index[filled]] = logits[filled]
    return out


# ----------------------------------------------------------------------------- the task


@dataclasses.dataclass(frozen=True)
class Classification:
    """Sequence classification or regression; fields are the config.task keys it reads."""

    head: ClassVar[str] = "sequence_classification"

    text_fields: str = ""
    label_field: str = "label"
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
        """One training batch's unpacked rows ({field: [b, ...]}) packed (`pack_features`):
        the packed batch fields, [R, ...] with R <= b."""
        features = Features(arrays, {"example_index": np.arange(len(arrays["labels"]))})
        return pack_features(features, max_segments=self.max_segments).arrays

    def model_inputs(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The model call's keyword inputs (segment_ids and cls_positions when packed)."""
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}

    def normalizers(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Whole-batch denominator: the number of real examples (at least 1)."""
        return {"examples": jnp.maximum(_example_weights(batch).sum(), 1.0)}

    def loss_and_metrics(
        self, out: EncoderOutput, batch: dict[str, jax.Array], norm: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Cross-entropy (mean squared error when num_labels == 1) over real examples, and
        accuracy (mse); each this batch's share of the whole-batch value.

        out.logits [B, C] with batch["labels"] [B], or, packed, [B, K, C] with [B, K].
        """
        logits, labels = out.logits, batch["labels"]
        if logits.ndim != labels.ndim + 1:
            raise ValueError(
                f"logits {logits.shape} do not fit labels {labels.shape}: packed batches need a model "
                "that takes cls_positions and returns logits [B, K, C]"
            )
        weights = _example_weights(batch)
        n = norm["examples"]
        if logits.shape[-1] == 1:
            squared = jnp.square(logits[..., 0].astype(jnp.float32) - labels.astype(jnp.float32))
            loss = jnp.sum(squared * weights) / n
            return loss, {"loss": loss, "mse": loss}
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        loss = jnp.sum(ce * weights) / n
        correct = jnp.argmax(logits, -1) == labels
        return loss, {"loss": loss, "accuracy": jnp.sum(correct * weights) / n}

    def eval_outputs(self, out: EncoderOutput, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """What `evaluate` needs from an eval step: logits [B, C] (packed: [B, K, C])."""
        return {"logits": out.logits}


def _example_weights(batch: dict[str, jax.Array]) -> jax.Array:
    """[B] (unpacked) or [B, K] (packed): 1 per real example, 0 on padding rows and slots."""
    weights = batch.get("weights")
    if weights is None:
        weights = jnp.ones(batch["labels"].shape[:1], jnp.float32)
    if "label_weights" in batch:
        return batch["label_weights"] * weights[:, None]
    return weights
