"""Data: pretraining corpora (corpus -> chunks -> tokenized sentences -> row layouts,
prepared by worker processes and cached per chunk on disk -> streams of masked rows) and
fine-tuning records (files and datasets -> records ->
features -> packed rows), served by deterministic, per-host, checkpointable loaders.

Knows tokens, not models: imports neither jax nor any other part of flaxft but errors
and files.
"""

from flaxft.data.corpus import DEFAULT_CORPUS, corpus_chunks, default_corpus, read_documents, sample_documents
from flaxft.data.examples import FORMATS, Examples, make_examples, split_documents
from flaxft.data.features import Features, RowTemplate, padding_fraction, stack_rows, truncate_pair
from flaxft.data.loader import FinetuneLoader, PackedFinetuneLoader, StepLoader, concat_outputs
from flaxft.data.masking import mask_example
from flaxft.data.prepare import Preparation, PreparedRows, Recipe
from flaxft.data.records import Split, load_splits, read_split
from flaxft.data.shards import Chunk
from flaxft.data.stream import InMemory, PretrainLoader
from flaxft.data.tokenize import TokenizedCorpus, tokenize_documents
from flaxft.data.tokenizer import (
    RowLayout,
    load_tokenizer,
    plain_tokenizer,
    row_layouts,
    special_token_ids,
    tokenizer_kind,
    words_tokenizer,
)
from flaxft.data.tokenizer_training import save_tokenizer, train_byte_level_bpe, train_wordpiece

__all__ = [
    "DEFAULT_CORPUS",
    "FORMATS",
    "Examples",
    "Features",
    "FinetuneLoader",
    "PackedFinetuneLoader",
    "PretrainLoader",
    "RowLayout",
    "RowTemplate",
    "Split",
    "StepLoader",
    "TokenizedCorpus",
    "Chunk",
    "InMemory",
    "Preparation",
    "PreparedRows",
    "Recipe",
    "corpus_chunks",
    "sample_documents",
    "concat_outputs",
    "default_corpus",
    "load_splits",
    "load_tokenizer",
    "make_examples",
    "mask_example",
    "padding_fraction",
    "plain_tokenizer",
    "read_documents",
    "read_split",
    "row_layouts",
    "save_tokenizer",
    "special_token_ids",
    "split_documents",
    "stack_rows",
    "tokenize_documents",
    "tokenizer_kind",
    "train_byte_level_bpe",
    "train_wordpiece",
    "truncate_pair",
    "words_tokenizer",
]
