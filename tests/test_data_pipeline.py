"""build_examples: the on-disk cache (reuse, invalidation, atomic files) and end-to-end use."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import flaxft.data.pipeline as pipeline
from flaxft.data import (
    DEFAULT_CORPUS,
    PretrainLoader,
    build_examples,
    default_corpus,
    load_tokenizer,
    special_token_ids,
)
from flaxft.errors import InputError


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(default_corpus()[:120]))
    return path


@pytest.fixture
def tokenize_calls(monkeypatch):
    """Counts how often the pipeline tokenizes."""
    calls = []
    original = pipeline.tokenize_documents

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "tokenize_documents", counting)
    return calls


def build(corpus, tokenizer, cache_dir, seq_len=64, **options):
    return build_examples(str(corpus), tokenizer, seq_len, "bert", 0, str(cache_dir), **options)


def assert_examples_equal(first, second):
    for name in first.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)


def test_second_build_reads_the_cache(corpus_file, tokenizer, tmp_path, tokenize_calls):
    cache_dir = tmp_path / "cache"
    first = build(corpus_file, tokenizer, cache_dir)
    assert len(tokenize_calls) == 1
    second = build(corpus_file, tokenizer, cache_dir)
    assert len(tokenize_calls) == 1
    assert_examples_equal(first, second)
    assert_examples_equal(first, build_examples(str(corpus_file), tokenizer, 64, "bert", 0, None))
    names = sorted(p.name for p in cache_dir.iterdir())
    assert len(names) == 2 and names[0].startswith("examples-bert-64-train-")
    assert names[1].startswith("tokens-")  # and no temporary files left behind


def test_new_seq_len_format_or_seed_reuses_tokens(corpus_file, tokenizer, tmp_path, tokenize_calls):
    cache_dir = tmp_path / "cache"
    build(corpus_file, tokenizer, cache_dir)
    assert build(corpus_file, tokenizer, cache_dir, seq_len=32).seq_len == 32
    build_examples(str(corpus_file), tokenizer, 64, "roberta", 0, str(cache_dir))
    build_examples(str(corpus_file), tokenizer, 64, "bert", 1, str(cache_dir))
    assert len(tokenize_calls) == 1
    assert len(list(cache_dir.glob("examples-*"))) == 4


def test_changed_corpus_invalidates(corpus_file, tokenizer, tmp_path, tokenize_calls):
    cache_dir = tmp_path / "cache"
    first = build(corpus_file, tokenizer, cache_dir)
    corpus_file.write_text(corpus_file.read_text() + "\n\nOne more document at the end.")
    second = build(corpus_file, tokenizer, cache_dir)
    assert len(tokenize_calls) == 2
    assert len(list(cache_dir.glob("tokens-*"))) == 2
    assert not np.array_equal(first.input_ids, second.input_ids)


def test_changed_tokenizer_invalidates(
    corpus_file, minilm_dir, tokenizer, tmp_path, tokenize_calls
):
    cache_dir = tmp_path / "cache"
    build(corpus_file, tokenizer, cache_dir)
    cased = tmp_path / "cased"
    cased.mkdir()
    shutil.copy(minilm_dir / "vocab.txt", cased)
    (cased / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    build(corpus_file, load_tokenizer(str(cased)), cache_dir)
    assert len(tokenize_calls) == 2
    build(corpus_file, load_tokenizer(str(minilm_dir)), cache_dir)  # equal tokenizer: a hit
    assert len(tokenize_calls) == 2


def test_changed_seq_len_invalidates_examples(corpus_file, tokenizer, tmp_path):
    cache_dir = tmp_path / "cache"
    build(corpus_file, tokenizer, cache_dir, seq_len=64)
    assert build(corpus_file, tokenizer, cache_dir, seq_len=48).input_ids.shape[1] == 48
    assert sorted(p.name.split("-")[2] for p in cache_dir.glob("examples-*")) == ["48", "64"]


def document_numbers(examples, tokenizer):
    text = " ".join(tokenizer.decode(row.tolist()) for row in examples.input_ids)
    return {int(number) for number in re.findall(r"paper (\d+) begins", text)}


def test_document_list_corpus_and_eval_split(tokenizer, tmp_path, tokenize_calls):
    documents = [f"Paper {i} begins. {text}" for i, text in enumerate(default_corpus()[:200])]
    train = build_examples(documents, tokenizer, 64, "roberta", 0, str(tmp_path), eval_fraction=0.1)
    evaluation = build_examples(documents, tokenizer, 64, "roberta", 0, str(tmp_path),
                                split="eval", eval_fraction=0.1)
    assert len(tokenize_calls) == 1  # both splits from one tokenized corpus
    train_documents = document_numbers(train, tokenizer)
    eval_documents = document_numbers(evaluation, tokenizer)
    assert len(eval_documents) == 20 and len(train_documents) == 180
    assert train_documents | eval_documents == set(range(200))
    build_examples(documents[:-1], tokenizer, 64, "roberta", 0, str(tmp_path), eval_fraction=0.1)
    assert len(tokenize_calls) == 2
    with pytest.raises(InputError, match="eval_fraction"):
        build_examples(documents, tokenizer, 64, "roberta", 0, None, split="eval")
    with pytest.raises(InputError, match="split"):
        build_examples(documents, tokenizer, 64, "roberta", 0, None, split="test")


def test_bad_format_fails_before_reading(tokenizer, tmp_path):
    with pytest.raises(InputError, match="format"):
        build_examples(str(tmp_path / "missing.txt"), tokenizer, 64, "t5", 0, str(tmp_path))
    with pytest.raises(InputError, match="missing.txt"):
        build_examples(str(tmp_path / "missing.txt"), tokenizer, 64, "bert", 0, str(tmp_path))
    with pytest.raises(InputError, match="no document with any token"):
        build_examples(["\u200b", "  \x00 "], tokenizer, 64, "roberta", 0, None)


def test_unreadable_cache_entry_is_rebuilt(corpus_file, tokenizer, tmp_path, tokenize_calls):
    cache_dir = tmp_path / "cache"
    first = build(corpus_file, tokenizer, cache_dir)
    for entry in cache_dir.iterdir():
        entry.write_bytes(b"truncated")
    assert_examples_equal(first, build(corpus_file, tokenizer, cache_dir))
    assert len(tokenize_calls) == 2


def test_default_corpus_end_to_end(tokenizer, tmp_path):
    examples = build_examples(DEFAULT_CORPUS, tokenizer, 128, "bert", 0, str(tmp_path))
    assert len(examples) > 3000
    loader = PretrainLoader(examples, 8, 0, vocab_size=tokenizer.get_vocab_size(),
                            special_ids=special_token_ids(tokenizer), prefetch=0)
    batch = next(loader)
    text = tokenizer.decode(batch["input_ids"][0].tolist(), skip_special_tokens=False)
    assert text.startswith("[CLS]") and "[MASK]" in text
    assert batch["masked_weights"].sum() > 8


def test_data_package_imports_no_jax_or_models():
    program = (
        "import sys, flaxft.data; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'torch') "
        "or m.startswith(('flaxft.models', 'flaxft.train'))]; print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
