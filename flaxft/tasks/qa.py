"""Extractive question answering (SQuAD): answer = a span of the context.

Records hold `question_field`, `context_field` and `answers_field` in SQuAD's layout:
{"text": [...], "answer_start": [...]} (character offsets into the context; an empty
list means unanswerable, as in SQuAD 2.0). The first answer trains.

Windows: each example becomes one or more question-context rows, laid out as the
tokenizer lays out pairs ([CLS] question [SEP] window [SEP], <s> question </s></s>
window </s>). The question keeps at most `max_query_length` tokens (and at most
seq_len // 2); a context longer than the room left is split into windows that overlap by
`doc_stride` tokens (Hugging Face's `stride`, run_qa's `--doc_stride`). A window's
start/end positions are the answer's first and last tokens, or 0 (the leading [CLS] or
<s>) when the answer is not wholly inside it, as run_qa labels them.

Evaluation scores the top `n_best_size` start and end positions among the context
tokens of every window of an example (run_qa takes the top n of all positions and then
drops those outside the context, so it may try fewer), keeps spans with end >= start
and at most `max_answer_length` tokens, and answers with the best start + end logit
over all windows, mapped back to its characters in the context by the tokenizer's
offsets (those transformers' `return_offsets_mapping` gives: byte-level BPE leaves the
space before a word out unless its post-processor keeps it, `trim_offsets=False`). With
unanswerable examples (SQuAD 2.0) the empty answer wins when the smallest score of
position 0 (the leading [CLS] or <s>) over the example's windows beats the best span, as
run_qa decides with a threshold of 0.

Batch fields: input_ids, attention_mask, token_type_ids [B, L] int32; start_positions,
end_positions [B] int32; weights [B] float32 (from the loader).
"""

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tokenizers import Tokenizer

from flaxft.data.features import Features, RowTemplate, stack_rows
from flaxft.data.records import Split, load_splits, require_fields, text_value
from flaxft.data.tokenizer import plain_tokenizer
from flaxft.errors import InputError
from flaxft.models import EncoderOutput
from flaxft.tasks import metrics as metrics_lib
from flaxft.tasks.task import TaskData

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEFAULT_MAX_QUERY_LENGTH = 64


# ----------------------------------------------------------------------------- host side


def build(
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    train_file: str = "",
    validation_file: str = "",
    dataset: str = "",
    question_field: str = "question",
    context_field: str = "context",
    answers_field: str = "answers",
    doc_stride: int = 128,
    max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
) -> TaskData:
    """Reads both splits and prepares the windows of both."""
    train, validation = load_splits(train_file, validation_file, dataset)
    options = dict(
        question_field=question_field,
        context_field=context_field,
        answers_field=answers_field,
        doc_stride=doc_stride,
        max_query_length=max_query_length,
    )
    train_features = make_features(train, tokenizer, seq_len, **options)
    validation_features = make_features(validation, tokenizer, seq_len, **options) if validation else None
    return TaskData(train_features, validation_features, num_labels=2)


def _answers(value: Any, source: str, field: str, index: int) -> tuple[list[str], list[int]]:
    if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
        raise InputError(
            f"{source}: {field!r} of record {index} must be "
            f"{{'text': [...], 'answer_start': [...]}}, got {value!r}"
        )
    texts, starts = list(value["text"]), list(value["answer_start"])
    if len(texts) != len(starts):
        raise InputError(
            f"{source}: {field!r} of record {index} has {len(texts)} texts but {len(starts)} starts"
        )
    return [str(t) for t in texts], [int(s) for s in starts]


def make_features(
    split: Split | list[dict[str, Any]],
    tokenizer: Tokenizer,
    seq_len: int,
    *,
    question_field: str = "question",
    context_field: str = "context",
    answers_field: str = "answers",
    doc_stride: int = 128,
    max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
) -> Features:
    """Windows of every record (see the module docstring), F >= N rows.

    Returns Features: arrays input_ids, attention_mask, token_type_ids [F, L] int32,
    start_positions, end_positions [F] int32; host: example_index [F], context_start
    [F] (row position of the window's first context token), window_start,
    window_length [F] (the window's context tokens), context_offsets (per example,
    [T, 2] character offsets of its context tokens), examples (per example: id,
    context, answers) and has_unanswerable.

    Raises:
        InputError: missing columns (naming file and column), malformed answers, an
            answer outside its context, or a doc_stride that leaves no room to advance.
    """
    split = split if isinstance(split, Split) else Split(list(split), "records")
    if not split.records:
        raise InputError(f"{split.source} is empty (no records)")
    require_fields(
        split,
        [question_field, context_field, answers_field],
        {
            question_field: "task.question_field",
            context_field: "task.context_field",
            answers_field: "task.answers_field",
        },
    )
    template = RowTemplate.of(tokenizer, seq_len)
    max_query = max(1, min(max_query_length, seq_len // 2))
    room = template.budget(True) - max_query  # context tokens per window, at least
    if doc_stride < 0 or doc_stride >= room:
        raise InputError(
            f"task.doc_stride ({doc_stride}) must be >= 0 and below the context room of a "
            f"window ({room} tokens = seq_len {seq_len} - {template.pair.num_specials} special "
            f"tokens - up to {max_query} question tokens)"
        )
    tokenizer = plain_tokenizer(tokenizer)
    questions = [
        text_value(r[question_field], split.source, question_field, i).lstrip()
        for i, r in enumerate(split.records)
    ]
    contexts = [
        text_value(r[context_field], split.source, context_field, i)
        for i, r in enumerate(split.records)
    ]
    question_encodings = tokenizer.encode_batch(questions, add_special_tokens=False)
    context_encodings = tokenizer.encode_batch(contexts, add_special_tokens=False)
    rows, starts, ends = [], [], []
    example_index, context_start, window_start, window_length = [], [], [], []
    context_offsets, examples = [], []
    has_unanswerable = False
    for i, record in enumerate(split.records):
        texts, answer_starts = _answers(record[answers_field], split.source, answers_field, i)
        context = contexts[i]
        for text, start in zip(texts, answer_starts):
            if not 0 <= start <= start + len(text) <= len(context):
                raise InputError(
                    f"{split.source}: answer {text!r} at {start} of record {i} lies outside its "
                    f"context ({len(context)} characters)"
                )
        has_unanswerable |= not texts
        question_ids = question_encodings[i].ids[:max_query]
        ids = context_encodings[i].ids
        offsets = np.asarray(context_encodings[i].offsets, np.int64).reshape(-1, 2)
        answer_tokens = _answer_tokens(offsets, answer_starts[0], len(texts[0])) if texts else None
        width = template.budget(True) - len(question_ids)
        _, window_offset = template.text_starts(len(question_ids), width)
        first = 0
        while True:
            last = min(first + width, len(ids))
            rows.append(template.row(question_ids, ids[first:last]))
            span = (0, 0)
            if answer_tokens is not None and first <= answer_tokens[0] and answer_tokens[1] < last:
                span = tuple(t - first + window_offset for t in answer_tokens)
            starts.append(span[0])
            ends.append(span[1])
            example_index.append(i)
            context_start.append(window_offset)
            window_start.append(first)
            window_length.append(last - first)
            if last >= len(ids):
                break
            first += width - doc_stride
        context_offsets.append(offsets)
        examples.append({"id": str(record.get("id", i)), "context": context, "answers": texts})
    arrays = stack_rows(rows, seq_len)
    arrays["start_positions"] = np.asarray(starts, np.int32)
    arrays["end_positions"] = np.asarray(ends, np.int32)
    host = {
        "example_index": np.asarray(example_index, np.int64),
        "context_start": np.asarray(context_start, np.int64),
        "window_start": np.asarray(window_start, np.int64),
        "window_length": np.asarray(window_length, np.int64),
        "context_offsets": context_offsets,
        "examples": examples,
        "has_unanswerable": has_unanswerable,
        "source": split.source,
    }
    return Features(arrays, host)


def _answer_tokens(offsets: np.ndarray, start_char: int, length: int) -> tuple[int, int] | None:
    """(first, last) context token of the answer characters [start_char, start_char +
    length): the last token starting at or before start_char and the first ending at or
    after its end (run_qa's rule). None when no token covers it."""
    if not len(offsets):
        return None
    end_char = start_char + length
    first = int(np.searchsorted(offsets[:, 0], start_char, side="right")) - 1
    last = int(np.searchsorted(offsets[:, 1], end_char, side="left"))
    if first < 0 or last >= len(offsets) or last < first:
        return None
    return first, last


def evaluate(
    outputs: dict[str, np.ndarray],
    features: Features,
    *,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2_with_negative: bool | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """SQuAD exact match and F1 (percent) of the best span per example.

    outputs: start_logits, end_logits [F, L] for the features' rows in order.
    version_2_with_negative: allow the empty answer (default: when some example of the
    split is unanswerable).
    Predictions, per example: {"id", "prediction_text", "answers"}.
    """
    if n_best_size < 1 or max_answer_length < 1:
        raise InputError(
            f"task.n_best_size ({n_best_size}) and task.max_answer_length "
            f"({max_answer_length}) must be >= 1"
        )
    start_logits = np.asarray(outputs["start_logits"], np.float64)
    end_logits = np.asarray(outputs["end_logits"], np.float64)
    host = features.host
    if start_logits.shape != end_logits.shape or len(start_logits) != len(host["example_index"]):
        raise ValueError(
            f"start/end logits {start_logits.shape}/{end_logits.shape} do not match "
            f"{len(host['example_index'])} features"
        )
    allow_empty = (
        host["has_unanswerable"] if version_2_with_negative is None else version_2_with_negative
    )
    best = {}  # example -> (score, first char, end char)
    null = {}  # example -> smallest score of position 0 over its windows
    for f, example in enumerate(host["example_index"].tolist()):
        null[example] = min(null.get(example, np.inf), start_logits[f, 0] + end_logits[f, 0])
        offset, length = host["context_start"][f], host["window_length"][f]
        if length == 0:
            continue
        starts = start_logits[f, offset : offset + length]
        ends = end_logits[f, offset : offset + length]
        top_starts = np.argsort(-starts, kind="stable")[:n_best_size]
        top_ends = np.argsort(-ends, kind="stable")[:n_best_size]
        pairs_start, pairs_end = np.meshgrid(top_starts, top_ends, indexing="ij")
        valid = (pairs_end >= pairs_start) & (pairs_end - pairs_start + 1 <= max_answer_length)
        if not valid.any():
            continue
        scores = np.where(valid, starts[pairs_start] + ends[pairs_end], -np.inf)
        k = int(np.argmax(scores))  # first of equal scores: deterministic
        score = scores.flat[k]
        if example not in best or score > best[example][0]:
            token_offsets = host["context_offsets"][example]
            first_token = host["window_start"][f] + pairs_start.flat[k]
            last_token = host["window_start"][f] + pairs_end.flat[k]
            best[example] = (
                score,
                int(token_offsets[first_token, 0]),
                int(token_offsets[last_token, 1]),
            )
    predicted, golds, predictions = [], [], []
    for i, example in enumerate(host["examples"]):
        text = ""
        if i in best and not (allow_empty and null[i] > best[i][0]):
            text = example["context"][best[i][1] : best[i][2]]
        predicted.append(text)
        golds.append(example["answers"])
        predictions.append(
            {"id": example["id"], "prediction_text": text, "answers": example["answers"]}
        )
    return metrics_lib.squad_scores(predicted, golds), predictions


# ----------------------------------------------------------------------------- the task


@dataclasses.dataclass(frozen=True)
class QA:
    """Extractive question answering; fields are the config.task keys it reads."""

    head: ClassVar[str] = "question_answering"

    question_field: str = "question"
    context_field: str = "context"
    answers_field: str = "answers"
    doc_stride: int = 128
    max_query_length: int = DEFAULT_MAX_QUERY_LENGTH
    n_best_size: int = 20
    max_answer_length: int = 30

    def build(self, tokenizer: Tokenizer, seq_len: int, *, train_file: str, validation_file: str,
              dataset: str) -> TaskData:
        """Both splits' windows (`build`)."""
        options = dataclasses.asdict(self)
        del options["n_best_size"], options["max_answer_length"]
        return build(tokenizer, seq_len, train_file=train_file, validation_file=validation_file,
                     dataset=dataset, **options)

    def evaluate(self, outputs: dict[str, np.ndarray], features: Features) -> tuple[dict[str, float], list[dict]]:
        return evaluate(outputs, features, n_best_size=self.n_best_size, max_answer_length=self.max_answer_length)

    def model_inputs(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return {k: batch[k] for k in MODEL_INPUTS}

    def normalizers(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Whole-batch denominator: the number of real rows (at least 1)."""
        return {"rows": jnp.maximum(_row_weights(batch).sum(), 1.0)}

    def loss_and_metrics(
        self, out: EncoderOutput, batch: dict[str, jax.Array], norm: dict[str, jax.Array]
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean of the start and end cross-entropies over real rows, and the accuracy of each
        (this batch's share). out.start_logits, out.end_logits [B, L]; positions [B]."""
        weights, n = _row_weights(batch), norm["rows"]
        terms = {}
        for side in ("start", "end"):
            logits = getattr(out, f"{side}_logits").astype(jnp.float32)
            positions = batch[f"{side}_positions"]
            terms[f"{side}_loss"] = (
                jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, positions) * weights)
                / n
            )
            terms[f"{side}_accuracy"] = jnp.sum((jnp.argmax(logits, -1) == positions) * weights) / n
        loss = (terms["start_loss"] + terms["end_loss"]) / 2
        return loss, {"loss": loss, **terms}

    def eval_outputs(self, out: EncoderOutput, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """What `evaluate` needs: start_logits and end_logits [B, L]."""
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}


def _row_weights(batch: dict[str, jax.Array]) -> jax.Array:
    if "weights" in batch:
        return batch["weights"]
    return jnp.ones(batch["start_positions"].shape, jnp.float32)
