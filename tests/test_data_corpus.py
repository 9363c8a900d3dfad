"""Corpus readers: every input type, the errors, and the offline default corpus."""

import json
import os
import subprocess
import sys
import time

import datasets
import pandas as pd
import pytest

from flaxft.data.corpus import (
    DEFAULT_CORPUS,
    corpus_chunks,
    default_corpus,
    documents_fingerprint,
    read_documents,
)
from flaxft.errors import InputError

RECORDS = ["First record. It has two sentences.", "Second record.", "Third, with a comma."]


def write_jsonl(path, records, column="text"):
    path.write_text("".join(json.dumps({column: r, "id": i}) + "\n" for i, r in enumerate(records)))
    return path


def test_text_file_splits_documents_at_blank_lines(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Doc one, line one.\nDoc one, line two.\n\n\n  \nDoc two.\n\nDoc three.\n")
    assert read_documents(str(path)) == [
        "Doc one, line one.\nDoc one, line two.", "Doc two.", "Doc three."
    ]


def test_folder_reads_supported_files_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("From b/z.md.")
    (tmp_path / "a.text").write_text("From a.text.\n\nSecond of a.text.")
    write_jsonl(tmp_path / "b" / "c.jsonl", ["From b/c.jsonl."])
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01 ignored")
    assert read_documents(str(tmp_path)) == [
        "From a.text.", "Second of a.text.", "From b/c.jsonl.", "From b/z.md."
    ]


def test_glob(tmp_path):
    for name in ["x2.txt", "x1.txt", "y.txt"]:
        (tmp_path / name).write_text(f"Text of {name}.")
    assert read_documents(str(tmp_path / "x*.txt")) == ["Text of x1.txt.", "Text of x2.txt."]


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet", "csv"])
def test_record_files_read_the_text_column(tmp_path, suffix):
    path = tmp_path / f"corpus.{suffix}"
    frame = pd.DataFrame({"id": range(3), "body": RECORDS})
    if suffix == "parquet":
        frame.to_parquet(path)
    elif suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        write_jsonl(path, RECORDS, column="body")
    assert read_documents(str(path), text_column="body") == RECORDS


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_missing_text_column_names_file_and_column(tmp_path, suffix):
    path = tmp_path / f"corpus.{suffix}"
    frame = pd.DataFrame({"content": RECORDS})
    if suffix == "parquet":
        frame.to_parquet(path)
    elif suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        write_jsonl(path, RECORDS, column="content")
    with pytest.raises(InputError, match=rf"corpus\.{suffix}.*'text'"):
        read_documents(str(path))


def test_a_broken_json_line_is_named_by_its_line(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "cut off\n{"text": "fine"}\n')
    with pytest.raises(InputError, match=r"corpus\.jsonl': line 3 is not JSON"):
        read_documents(str(path))


def test_saved_dataset_and_dataset_dict(tmp_path):
    datasets.disable_progress_bars()
    dataset = datasets.Dataset.from_dict({"text": RECORDS, "label": [0, 1, 0]})
    dataset.save_to_disk(str(tmp_path / "single"))
    assert read_documents(str(tmp_path / "single")) == RECORDS
    splits = datasets.DatasetDict({"train": dataset, "validation": dataset.select([0])})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert read_documents(str(tmp_path / "dict")) == RECORDS
    with pytest.raises(InputError, match=r"single.*'body'"):
        read_documents(str(tmp_path / "single"), text_column="body")
    datasets.DatasetDict({"validation": dataset}).save_to_disk(str(tmp_path / "no-train"))
    with pytest.raises(InputError, match=r"no-train.*'train'"):
        read_documents(str(tmp_path / "no-train"))


def test_missing_path_names_the_path(tmp_path):
    missing = str(tmp_path / "nowhere.txt")
    with pytest.raises(InputError, match="nowhere.txt"):
        read_documents(missing)
    with pytest.raises(InputError, match="nothing-matches"):
        read_documents(str(tmp_path / "nothing-matches*.txt"))


def test_uncached_hub_dataset_names_the_dataset():
    # Offline (conftest), a name that is no file and not in the HF cache must fail cleanly.
    with pytest.raises(InputError, match="flaxft-no-such-dataset"):
        read_documents("flaxft-no-such-dataset:some-config")


def test_empty_corpus_names_the_path(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("\n\n   \n\t\n")
    with pytest.raises(InputError, match="blank.txt"):
        read_documents(str(path))
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    with pytest.raises(InputError, match="empty"):
        read_documents(str(empty_folder))


def test_chunk_identity_follows_content_changes(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("Some text.")
    identity = lambda **options: corpus_chunks(str(path), **options)[0][0].identity  # noqa: E731
    before = identity()
    assert identity() == before
    assert identity(text_column="other") != before
    path.write_text("Some other text.")
    assert identity() != before


def test_default_corpus_is_large_clean_english_prose():
    started = time.perf_counter()
    documents = read_documents(DEFAULT_CORPUS)
    elapsed = time.perf_counter() - started
    words = sum(len(document.split()) for document in documents)
    print(f"default corpus: {len(documents)} documents, {words} words, {elapsed:.1f} s")
    assert words >= 100_000
    assert len(set(documents)) == len(documents)
    assert all(len(document.split()) >= 20 for document in documents)
    lines = [line for document in documents for line in document.splitlines()]
    assert not any(line.lstrip().startswith((">>>", "... ")) for line in lines)
    assert all(line == " ".join(line.split()) for line in lines)
    assert any("Return" in document for document in documents)  # real docstrings


def test_default_corpus_is_deterministic_across_processes():
    program = (
        "from flaxft.data.corpus import default_corpus, documents_fingerprint;"
        "print(documents_fingerprint(default_corpus()))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    other = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    assert other.stdout.strip() == documents_fingerprint(default_corpus())
