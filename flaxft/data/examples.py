"""Fixed-length pretraining rows from a `TokenizedCorpus` (numpy, built once, then cached).

Two formats:

- "bert": the original BERT `create_pretraining_data.py` recipe, one sentence pair per
  row. Per document a target length is drawn (seq_len - 3; with probability
  `short_seq_prob` a uniform one in [2, seq_len - 3]); sentences are gathered into a
  chunk until it reaches the target, and the chunk is cut at a random sentence boundary
  into A and B. With probability 1/2 (always for a one-sentence chunk) B is replaced by
  sentences from a random other document (label 1, NotNext) and the chunk's unused
  sentences start the next chunk; otherwise B is the chunk's rest (label 0, IsNext;
  Hugging Face's convention). So corpora of short documents get more than half NotNext
  (about 63% on the default corpus at seq_len 128), as the original does. The pair is
  trimmed to seq_len - 3 tokens by removing tokens from the longer side, each from the
  front or back with probability 1/2.
  Row: [CLS] A [SEP] B [SEP] [PAD]...; token_type_ids 1 on B [SEP]; segment_ids 1 on
  the pair. Each document is visited once (the original's `dupe_factor` is 1 here:
  masking is dynamic, so repeats would only reshuffle pairings).
- "roberta" (FULL-SENTENCES, no NSP): each document is cut into pieces of at most
  seq_len - 2 tokens, each piece becomes a sequence [CLS] piece [SEP], and sequences
  are packed, in corpus order, into rows of seq_len (next fit: a sequence that does not
  fit starts a new row; none is split). segment_ids number the sequences in a row 1, 2,
  ...; token_type_ids and next_sentence_label are 0. Needs no randomness.

[CLS], [SEP] and [PAD] stand for the tokenizer's cls, sep and pad tokens by role
(`special_token_ids`): a RoBERTa-style tokenizer's rows are <s> piece </s> <pad>..., the
same shape.

Evaluation text is held out by whole documents (`split_documents`), so eval rows come
from documents that training never sees.
"""

import dataclasses
from collections.abc import Mapping

import numpy as np

from flaxft.data.arrays import concat_ranges, offsets
from flaxft.data.tokenize import TokenizedCorpus
from flaxft.errors import InputError

FORMATS = ("bert", "roberta")
IS_NEXT, NOT_NEXT = 0, 1
# The held-out documents do not depend on the training seed, so runs with different
# seeds are evaluated on the same text.
_HELDOUT_SEED = 20181011


@dataclasses.dataclass(frozen=True)
class Examples:
    """N fixed-length rows, L = seq_len.

    Attributes:
        input_ids: [N, L] int32, unmasked; [PAD] after the last real token.
        token_type_ids: [N, L] int32, 1 on sentence B and its [SEP] ("bert"), else 0.
        segment_ids: [N, L] int32, 1, 2, ... per packed sequence on real tokens, 0 on padding.
        word_starts: [N, L] bool, True on the first piece of each word; False on specials.
        special_mask: [N, L] bool, True on [CLS], [SEP] and [PAD].
        next_sentence_label: [N] int32, 0 = B follows A, 1 = B is random (0 for "roberta").
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    segment_ids: np.ndarray
    word_starts: np.ndarray
    special_mask: np.ndarray
    next_sentence_label: np.ndarray

    def __len__(self) -> int:
        """N."""
        return len(self.input_ids)

    @property
    def seq_len(self) -> int:
        """L."""
        return self.input_ids.shape[1]


def split_documents(num_documents: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Document-level train/eval split, the same for every training seed.

    `round(eval_fraction * num_documents)` documents (at least 1 when eval_fraction > 0)
    are drawn at random for evaluation.

    Returns:
        (train_documents, eval_documents): sorted int64 index arrays, together a
        partition of range(num_documents).

    Raises:
        InputError: `eval_fraction` is outside [0, 1) or would leave no training document.
    """
    if not 0 <= eval_fraction < 1:
        raise InputError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    num_eval = max(1, round(eval_fraction * num_documents)) if eval_fraction > 0 else 0
    if num_eval >= num_documents and num_eval > 0:
        raise InputError(
            f"eval_fraction {eval_fraction} holds out all {num_documents} documents"
        )
    order = np.random.default_rng(_HELDOUT_SEED).permutation(num_documents)
    return np.sort(order[num_eval:]), np.sort(order[:num_eval])


def check_example_args(seq_len: int, format: str) -> None:
    """Raises InputError unless `format` is known and `seq_len` leaves room for a token."""
    if format not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {format!r}")
    min_seq_len = {"bert": 5, "roberta": 3}[format]  # specials + one token per sentence
    if seq_len < min_seq_len:
        raise InputError(
            f"seq_len must be >= {min_seq_len} for format {format!r}, got {seq_len}"
        )


def make_examples(
    corpus: TokenizedCorpus,
    seq_len: int,
    format: str,
    seed: int,
    special_ids: Mapping[str, int],
    short_seq_prob: float = 0.1,
) -> Examples:
    """Rows of `format` ("bert" or "roberta", see the module docstring) from `corpus`:
    every row of `lay_out_rows(corpus, ..., np.random.default_rng(seed))`.

    Args:
        corpus: tokenized documents.
        seq_len: L, the row length.
        format: "bert" (sentence pairs with NSP labels) or "roberta" (packed sequences).
        seed: randomness of "bert" rows; same inputs and seed -> same rows.
        special_ids: at least the "cls", "sep" and "pad" ids by role
            (`special_token_ids(tokenizer)`).
        short_seq_prob: "bert" only: probability of a shorter target length.

    Returns:
        `Examples` with N rows; N depends on the corpus and the format.

    Raises:
        InputError: unknown format, seq_len too small, or "bert" with < 2 documents.
    """
    layout = lay_out_rows(corpus, seq_len, format, np.random.default_rng(seed), short_seq_prob)
    return fill_rows(corpus, layout, np.arange(layout.num_rows), seq_len, special_ids)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the tokens of N rows come from: K segments, each [CLS]? tokens[start:end]
    [SEP], placed in its row after the one before (arrays may be memory-mapped).

    Attributes:
        row_offsets: [N + 1] int64: row r is segments [row_offsets[r], row_offsets[r + 1]).
        start, end: [K] int64 token positions in the `TokenizedCorpus`.
        leading_cls: [K] bool, the segment opens with [CLS].
        segment_id: [K] int32, its `segment_ids` value.
        token_type: [K] int32, its `token_type_ids` value.
        next_sentence_label: [N] int32.
    """

    row_offsets: np.ndarray
    start: np.ndarray
    end: np.ndarray
    leading_cls: np.ndarray
    segment_id: np.ndarray
    token_type: np.ndarray
    next_sentence_label: np.ndarray

    @property
    def num_rows(self) -> int:
        """N."""
        return len(self.row_offsets) - 1


def lay_out_rows(
    corpus: TokenizedCorpus, seq_len: int, format: str, rng: np.random.Generator, short_seq_prob: float = 0.1
) -> Layout:
    """The `Layout` of the rows of `format` made from `corpus` (the module docstring);
    "bert" draws from `rng`.

    Raises:
        InputError: unknown format, seq_len too small, or "bert" with < 2 documents.
    """
    check_example_args(seq_len, format)
    if format == "bert":
        if corpus.num_documents < 2:
            raise InputError(
                f"format 'bert' needs >= 2 documents for next-sentence pairs, "
                f"got {corpus.num_documents}"
            )
        segments, labels = _bert_segments(corpus, seq_len - 3, short_seq_prob, rng)
    else:
        segments = _roberta_segments(corpus, seq_len)
        labels = np.zeros(segments.num_rows, np.int32)
    return Layout(
        row_offsets=offsets(np.bincount(segments.row, minlength=segments.num_rows)),
        start=segments.start, end=segments.end, leading_cls=segments.leading_cls,
        segment_id=segments.segment_id, token_type=segments.token_type,
        next_sentence_label=labels.astype(np.int32),
    )


def fill_rows(
    corpus: TokenizedCorpus, layout: Layout, rows: np.ndarray, seq_len: int, special_ids: Mapping[str, int]
) -> Examples:
    """The rows `rows` ([b] int, any order, repeats allowed) of `layout` as `Examples`
    ([b, seq_len]), their tokens read from `corpus`."""
    rows = np.asarray(rows, np.int64)
    first = layout.row_offsets[rows]
    counts = layout.row_offsets[rows + 1] - first
    picked = concat_ranges(first, counts)
    segments = _Segments(
        row=np.repeat(np.arange(len(rows)), counts),
        start=np.asarray(layout.start[picked]), end=np.asarray(layout.end[picked]),
        leading_cls=np.asarray(layout.leading_cls[picked]), segment_id=np.asarray(layout.segment_id[picked]),
        token_type=np.asarray(layout.token_type[picked]),
    )
    labels = np.asarray(layout.next_sentence_label[rows])
    return _fill_rows(corpus, segments, labels, len(rows), seq_len, special_ids)


@dataclasses.dataclass(frozen=True)
class _Segments:
    """Row layout while it is built: as `Layout`, with each segment's row number instead
    of row offsets. Arrays are [num_segments], sorted by row."""

    row: np.ndarray
    start: np.ndarray
    end: np.ndarray
    leading_cls: np.ndarray
    segment_id: np.ndarray
    token_type: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.row[-1]) + 1 if len(self.row) else 0


def _bert_segments(
    corpus: TokenizedCorpus, max_num_tokens: int, short_seq_prob: float, rng: np.random.Generator
) -> tuple[_Segments, np.ndarray]:
    """Two segments per row ([CLS] A [SEP], B [SEP]) and [N] int32 NSP labels."""
    sentence_start = corpus.sentence_offsets.tolist()
    document_start = corpus.document_offsets.tolist()
    num_documents = corpus.num_documents
    pairs = []  # (a_start, a_end, b_start, b_end, label) in token positions
    for document in range(num_documents):
        first, stop = document_start[document], document_start[document + 1]
        target = max_num_tokens
        if rng.random() < short_seq_prob:
            target = int(rng.integers(2, max_num_tokens + 1))
        chunk_first = i = first  # the chunk is sentences [chunk_first, i]
        while i < stop:
            if i == stop - 1 or sentence_start[i + 1] - sentence_start[chunk_first] >= target:
                num_sentences = i + 1 - chunk_first
                a_sentences = int(rng.integers(1, num_sentences)) if num_sentences > 1 else 1
                a_stop = chunk_first + a_sentences
                a = (sentence_start[chunk_first], sentence_start[a_stop])
                if num_sentences == 1 or rng.random() < 0.5:
                    label = NOT_NEXT
                    other = int(rng.integers(num_documents - 1))
                    other += other >= document
                    b = _random_b(corpus, other, target - (a[1] - a[0]), rng)
                    i = a_stop - 1  # the chunk's unused sentences start the next chunk
                else:
                    label = IS_NEXT
                    b = (sentence_start[a_stop], sentence_start[i + 1])
                pairs.append((*_truncate_pair(a, b, max_num_tokens, rng), label))
                chunk_first = i + 1
            i += 1
    table = np.array(pairs, dtype=np.int64).reshape(-1, 5)
    num_rows = len(table)
    segments = _Segments(
        row=np.repeat(np.arange(num_rows), 2),
        start=table[:, [0, 2]].ravel(),
        end=table[:, [1, 3]].ravel(),
        leading_cls=np.tile([True, False], num_rows),
        segment_id=np.ones(2 * num_rows, np.int32),
        token_type=np.tile(np.array([0, 1], np.int32), num_rows),
    )
    return segments, table[:, 4].astype(np.int32)


def _random_b(
    corpus: TokenizedCorpus, document: int, target_length: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Tokens of `document` from a random sentence on, whole sentences until their length
    reaches `target_length` or the document ends: (start, end) token positions."""
    first, stop = corpus.document_offsets[document], corpus.document_offsets[document + 1]
    start_sentence = int(rng.integers(first, stop))
    ends = corpus.sentence_offsets[start_sentence + 1 : stop + 1]
    start = int(corpus.sentence_offsets[start_sentence])
    last = min(int(np.searchsorted(ends - start, target_length)), len(ends) - 1)
    return start, int(ends[last])


def _truncate_pair(
    a: tuple[int, int], b: tuple[int, int], max_num_tokens: int, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Trims the pair of token ranges to at most `max_num_tokens` tokens together.

    Like the original's loop that removes one token at a time from the longer side (B on
    ties), from its front or back by a coin flip: the final lengths follow in closed form
    and the front/back split of each side's removals is binomial.
    """
    length_a, length_b = a[1] - a[0], b[1] - b[0]
    excess = max(0, length_a + length_b - max_num_tokens)
    levelling = min(abs(length_a - length_b), excess)
    trim_a = levelling if length_a > length_b else 0
    trim_b = levelling - trim_a
    trim_b += (excess - levelling + 1) // 2
    trim_a += (excess - levelling) // 2
    front_a, front_b = int(rng.binomial(trim_a, 0.5)), int(rng.binomial(trim_b, 0.5))
    return a[0] + front_a, a[1] - (trim_a - front_a), b[0] + front_b, b[1] - (trim_b - front_b)


def _roberta_segments(corpus: TokenizedCorpus, seq_len: int) -> _Segments:
    """Every document cut into pieces of <= seq_len - 2 tokens, each a segment
    [CLS] piece [SEP], packed next-fit in corpus order."""
    piece_length = seq_len - 2
    document_token_offsets = corpus.document_token_offsets()
    document_lengths = np.diff(document_token_offsets)
    pieces_per_document = -(-document_lengths // piece_length)
    piece_index = concat_ranges(np.zeros_like(pieces_per_document), pieces_per_document)
    document_start = np.repeat(document_token_offsets[:-1], pieces_per_document)
    document_end = np.repeat(document_token_offsets[1:], pieces_per_document)
    start = document_start + piece_index * piece_length
    end = np.minimum(start + piece_length, document_end)
    row = np.empty(len(start), np.int64)
    current_row, used = -1, seq_len
    for index, width in enumerate((end - start + 2).tolist()):
        if used + width > seq_len:
            current_row, used = current_row + 1, 0
        row[index] = current_row
        used += width
    return _Segments(
        row=row,
        start=start,
        end=end,
        leading_cls=np.ones(len(start), bool),
        segment_id=(_sum_before_in_row(np.ones_like(row), row) + 1).astype(np.int32),
        token_type=np.zeros(len(start), np.int32),
    )


def _fill_rows(
    corpus: TokenizedCorpus,
    segments: _Segments,
    labels: np.ndarray,
    num_rows: int,
    seq_len: int,
    special_ids: Mapping[str, int],
) -> Examples:
    """Writes every segment into its row: [N, L] arrays, vectorized over all segments."""
    lengths = segments.end - segments.start
    widths = segments.leading_cls + lengths + 1  # [CLS]? tokens [SEP]
    column = _sum_before_in_row(widths, segments.row)  # first column of each segment
    text_column = column + segments.leading_cls

    shape = (num_rows, seq_len)
    input_ids = np.full(shape, special_ids["pad"], np.int32)
    token_type_ids = np.zeros(shape, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    word_starts = np.zeros(shape, bool)
    special_mask = np.ones(shape, bool)

    token_rows = np.repeat(segments.row, lengths)
    token_columns = concat_ranges(text_column, lengths)
    source = concat_ranges(segments.start, lengths)
    input_ids[token_rows, token_columns] = corpus.token_ids[source]
    word_starts[token_rows, token_columns] = corpus.word_starts[source]
    # A segment's first token opens a word even where trimming or cutting split one.
    word_starts[segments.row[lengths > 0], text_column[lengths > 0]] = True
    special_mask[token_rows, token_columns] = False
    input_ids[segments.row[segments.leading_cls], column[segments.leading_cls]] = special_ids["cls"]
    input_ids[segments.row, text_column + lengths] = special_ids["sep"]

    span_rows = np.repeat(segments.row, widths)
    span_columns = concat_ranges(column, widths)
    token_type_ids[span_rows, span_columns] = np.repeat(segments.token_type, widths)
    segment_ids[span_rows, span_columns] = np.repeat(segments.segment_id, widths)
    return Examples(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        segment_ids=segment_ids,
        word_starts=word_starts,
        special_mask=special_mask,
        next_sentence_label=labels.astype(np.int32),
    )


def _sum_before_in_row(values: np.ndarray, row: np.ndarray) -> np.ndarray:
    """[n]: sum of `values` ([n]) over the earlier entries of the same row.

    `row` ([n]) must be sorted and hold every row number from 0 to its maximum.
    """
    exclusive = offsets(values)[:-1]
    first_of_row = np.flatnonzero(np.diff(row, prepend=-1))
    return exclusive - exclusive[first_of_row][row]
