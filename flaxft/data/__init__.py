"""Pretraining data: corpus -> tokenizer -> tokenized sentences -> fixed-length examples
(cached on disk) -> deterministic, per-host, dynamically masked batches.

Knows tokens, not models: imports neither jax nor any other part of flaxft but errors.
"""

from flaxft.data.corpus import DEFAULT_CORPUS, default_corpus, read_documents
from flaxft.data.examples import FORMATS, Examples, make_examples, split_documents
from flaxft.data.loader import PretrainLoader
from flaxft.data.masking import mask_example
from flaxft.data.pipeline import build_examples
from flaxft.data.tokenize import TokenizedCorpus, tokenize_documents
from flaxft.data.tokenizer import load_tokenizer, save_tokenizer, special_token_ids, train_wordpiece

__all__ = [
    "DEFAULT_CORPUS",
    "FORMATS",
    "Examples",
    "PretrainLoader",
    "TokenizedCorpus",
    "build_examples",
    "default_corpus",
    "load_tokenizer",
    "make_examples",
    "mask_example",
    "read_documents",
    "save_tokenizer",
    "special_token_ids",
    "split_documents",
    "tokenize_documents",
    "train_wordpiece",
]
