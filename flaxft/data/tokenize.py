"""Documents -> sentences -> token ids, stored as flat arrays (`TokenizedCorpus`).

Sentence rule: a document is split at line breaks, and within a line after `.`, `!` or
`?` (optionally followed by a closing quote or bracket) followed by whitespace and then
an uppercase letter, a digit, or an opening quote or bracket. So "e.g. the" stays
whole, "Mr. Smith" is split; hard-wrapped prose is split at every line break. Sentences
that tokenize to nothing are dropped, and so are documents left with no sentence.
"""

import dataclasses
import itertools
import re

import numpy as np
from tokenizers import Tokenizer

from flaxft.data.arrays import concat_ranges, offsets
from flaxft.data.tokenizer import untruncated_copy

_SENTENCE_BREAK = re.compile(r"""(?:(?<=[.!?])|(?<=[.!?]["')\]]))\s+(?=["'(\[]?[A-Z0-9])""")


@dataclasses.dataclass(frozen=True)
class TokenizedCorpus:
    """Token ids of every sentence of every document, as flat arrays.

    Sentence `s` is `token_ids[sentence_offsets[s]:sentence_offsets[s + 1]]`; document `d`
    holds sentences `document_offsets[d]` up to `document_offsets[d + 1]`, whose tokens
    are contiguous. Token ids carry no special tokens.

    Attributes:
        token_ids: [T] int32.
        word_starts: [T] bool, True on the first piece of each word (`encoding.word_ids`)
            and on the first token of each sentence.
        sentence_offsets: [S + 1] int64, token offsets; starts at 0, ends at T.
        document_offsets: [D + 1] int64, sentence offsets; starts at 0, ends at S.
    """

    token_ids: np.ndarray
    word_starts: np.ndarray
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray

    @property
    def num_documents(self) -> int:
        """D."""
        return len(self.document_offsets) - 1

    def document_token_offsets(self) -> np.ndarray:
        """[D + 1] int64: document `d` is tokens `[out[d], out[d + 1])`."""
        return self.sentence_offsets[self.document_offsets]

    def select(self, documents: np.ndarray) -> "TokenizedCorpus":
        """The corpus of just `documents` ([K] int indices), in the order given."""
        documents = np.asarray(documents, dtype=np.int64)
        first_sentence = self.document_offsets[documents]
        sentence_counts = self.document_offsets[documents + 1] - first_sentence
        sentences = concat_ranges(first_sentence, sentence_counts)
        sentence_lengths = np.diff(self.sentence_offsets)[sentences]
        tokens = concat_ranges(self.sentence_offsets[sentences], sentence_lengths)
        return TokenizedCorpus(
            token_ids=self.token_ids[tokens],
            word_starts=self.word_starts[tokens],
            sentence_offsets=offsets(sentence_lengths),
            document_offsets=offsets(sentence_counts),
        )


def split_sentences(document: str) -> list[str]:
    """The non-blank sentences of `document` by the module's sentence rule, stripped."""
    return [
        sentence.strip()
        for line in document.splitlines()
        for sentence in _SENTENCE_BREAK.split(line)
        if sentence.strip()
    ]


def tokenize_documents(
    documents: list[str], tokenizer: Tokenizer, batch_size: int = 1024
) -> TokenizedCorpus:
    """Splits each document into sentences and tokenizes them without special tokens.

    Sentences are encoded with `tokenizer.encode_batch`, `batch_size` documents at a time.
    Each sentence after a document's first is encoded with the space that parts it from
    the one before (a line break counts as a space), so a byte-level BPE tokenizer marks
    its first word with "Ġ" as in running text, where fine-tuning meets it; WordPiece and
    SentencePiece tokenizers ignore that space. Truncation and padding configured on
    `tokenizer` are ignored, and special-token text in documents (a literal "[SEP]") is
    tokenized as ordinary text, so no special id comes from a document (unless the
    model's own vocabulary holds the special pieces, as XLM-R's Unigram model does).
    `tokenizer` itself is not modified.

    Returns:
        The `TokenizedCorpus`; documents with no tokens are dropped.
    """
    plain = untruncated_copy(tokenizer)
    plain.encode_special_tokens = True
    batches = [
        _tokenize_batch(documents[start : start + batch_size], plain)
        for start in range(0, len(documents), batch_size)
    ] or [_tokenize_batch([], plain)]
    token_ids, word_starts, sentence_lengths, sentence_counts = (
        np.concatenate(column) for column in zip(*batches)
    )
    return TokenizedCorpus(
        token_ids=token_ids,
        word_starts=word_starts,
        sentence_offsets=offsets(sentence_lengths),
        document_offsets=offsets(sentence_counts),
    )


def _tokenize_batch(
    documents: list[str], tokenizer: Tokenizer
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """token_ids [T] int32, word_starts [T] bool, sentence_lengths [S] int64 and
    sentence_counts [D] int64 (sentences per document) of the non-empty sentences and
    documents among `documents`."""
    sentences = [split_sentences(document) for document in documents]
    texts = [
        f" {sentence}" if index else sentence
        for document in sentences
        for index, sentence in enumerate(document)
    ]
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
    total = int(lengths.sum())
    token_ids = np.fromiter(
        itertools.chain.from_iterable(e.ids for e in encodings), np.int32, total
    )
    word_ids = np.fromiter(
        (-1 if w is None else w for e in encodings for w in e.word_ids), np.int64, total
    )
    word_starts = np.ones(total, bool)
    word_starts[1:] = word_ids[1:] != word_ids[:-1]
    word_starts[offsets(lengths)[:-1][lengths > 0]] = True  # word ids restart per sentence
    sentences_per_document = np.fromiter(map(len, sentences), np.int64, len(sentences))
    document_of_sentence = np.repeat(np.arange(len(sentences)), sentences_per_document)
    kept = lengths > 0
    sentence_counts = np.bincount(document_of_sentence[kept], minlength=len(sentences))
    return token_ids, word_starts, lengths[kept], sentence_counts[sentence_counts > 0]
