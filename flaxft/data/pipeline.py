"""Corpus -> tokens -> examples, each stage cached on disk under a key of its inputs.

Stage 1, the tokenized corpus, is keyed by the corpus identity (`corpus_fingerprint`,
or a hash of the text for a list of documents) and the tokenizer (a hash of its JSON).
Stage 2, the examples of one split, adds the split, eval_fraction, format, seq_len,
seed and short_seq_prob. So a new seq_len or seed reuses the tokens, and a second run
with the same inputs reads one .npz file and tokenizes nothing.
"""

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from flaxft.data.cache import cache_key, load_or_build, tokenizer_fingerprint
from flaxft.data.corpus import corpus_fingerprint, documents_fingerprint, read_documents
from flaxft.data.examples import Examples, check_example_args, make_examples, split_documents
from flaxft.data.tokenize import TokenizedCorpus, tokenize_documents
from flaxft.data.tokenizer import special_token_ids
from flaxft.errors import InputError

SPLITS = ("train", "eval")  # in the order split_documents returns them
_log = logging.getLogger(__name__)


def build_examples(
    corpus: str | Sequence[str],
    tokenizer: Tokenizer,
    seq_len: int,
    format: str,
    seed: int,
    cache_dir: str | None,
    *,
    split: str = "train",
    eval_fraction: float = 0.0,
    text_column: str = "text",
    short_seq_prob: float = 0.1,
) -> Examples:
    """The examples of one split of a corpus, from the cache when possible.

    Args:
        corpus: a corpus name for `read_documents` (path, glob, dataset, DEFAULT_CORPUS),
            or the documents themselves.
        tokenizer: splits text into ids; must have every special token role
            (`special_token_ids`).
        seq_len, format, seed, short_seq_prob: as in `make_examples`.
        cache_dir: folder for cached .npz files; None builds without caching.
        split: "train" or "eval": the documents `split_documents(D, eval_fraction)` gives.
        eval_fraction: fraction of documents held out for "eval".
        text_column: the text field of record files and datasets.

    Returns:
        `Examples` with rows of length seq_len.

    Raises:
        InputError: bad corpus, tokenizer, split or example parameters.
    """
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "eval" and eval_fraction == 0:
        raise InputError("split 'eval' needs eval_fraction > 0")
    check_example_args(seq_len, format)
    special_ids = special_token_ids(tokenizer)
    tokens_key = cache_key(
        "tokens", _corpus_identity(corpus, text_column), tokenizer_fingerprint(tokenizer)
    )
    examples_key = cache_key(
        "examples", tokens_key, split, eval_fraction, format, seq_len, seed, short_seq_prob
    )
    tokens_file = examples_file = None
    if cache_dir is not None:
        cache = Path(cache_dir).expanduser()
        tokens_file = cache / f"tokens-{tokens_key}.npz"
        examples_file = cache / f"examples-{format}-{seq_len}-{split}-{examples_key}.npz"

    def examples_from_tokens() -> Examples:
        tokens = load_or_build(
            tokens_file, TokenizedCorpus, lambda: _tokenize(corpus, tokenizer, text_column)
        )
        documents = split_documents(tokens.num_documents, eval_fraction)[SPLITS.index(split)]
        examples = make_examples(
            tokens.select(documents), seq_len, format, seed, special_ids, short_seq_prob
        )
        _log.info("made %d %s %s examples of length %d", len(examples), split, format, seq_len)
        return examples

    return load_or_build(examples_file, Examples, examples_from_tokens)


def _corpus_identity(corpus: str | Sequence[str], text_column: str) -> str:
    if isinstance(corpus, str):
        return corpus_fingerprint(corpus, text_column)
    return documents_fingerprint(list(corpus))


def _tokenize(
    corpus: str | Sequence[str], tokenizer: Tokenizer, text_column: str
) -> TokenizedCorpus:
    started = time.perf_counter()
    if isinstance(corpus, str):
        documents, name = read_documents(corpus, text_column), repr(corpus)
    else:
        documents, name = list(corpus), f"of {len(corpus)} given documents"
    tokens = tokenize_documents(documents, tokenizer)
    if tokens.num_documents == 0:
        raise InputError(f"corpus {name} has no document with any token")
    _log.info(
        "tokenized %d documents into %d tokens in %.1f s",
        tokens.num_documents, len(tokens.token_ids), time.perf_counter() - started,
    )
    return tokens
