"""Reading a pretraining corpus into documents (one Python string per document).

A corpus is named by one string, resolved in this order:

1. `DEFAULT_CORPUS` ("stdlib-docstrings"): the offline default, `default_corpus()`.
2. A folder written by `datasets.Dataset.save_to_disk` (or a `DatasetDict`, whose `train`
   split is read): one record per document, text in `text_column`.
3. A file, a folder (its `.txt .text .md .jsonl .json .parquet .csv` files, recursively,
   sorted by path), or a glob pattern (`*`, `?`, `[`; `**` recurses), read by suffix:
   - `.jsonl`, `.json` (JSON lines), `.parquet`, `.csv`: one record per document, its text
     in `text_column`;
   - anything else (`.txt`, `.text`, `.md`, ...): plain UTF-8 text, documents separated by
     one or more blank lines.
4. Anything else that does not look like a file path is a Hugging Face hub dataset,
   `"name"` or `"name:config"` (e.g. `"wikitext:wikitext-103-raw-v1"`; a `/` belongs to the
   repository id, as in `"Salesforce/wikitext"`), loaded with `datasets.load_dataset` and
   its `train` split read. Offline this works only for datasets already in the HF cache.

The default corpus is real English prose that every Python installation carries: the
docstrings (module, class and function) of the standard library's own source files under
`sysconfig.get_paths()["stdlib"]`. They are read with `ast` and never imported (importing
`antigravity` opens a browser). It is the same for a given Python build, holds well over
100k words, and takes about 2 s to collect, so it is only memoized in-process, never
written to disk.
"""

import ast
import functools
import glob
import hashlib
import os
import re
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from flaxft.data.hub import is_saved_dataset, load_train_split
from flaxft.data.shards import Chunk, file_chunks, read_chunk, record_chunks
from flaxft.errors import InputError

DEFAULT_CORPUS = "stdlib-docstrings"

TEXT_SUFFIXES = (".txt", ".text", ".md")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + RECORD_SUFFIXES

# Standard-library folders that hold tests, tools or third-party code rather than the
# library's own documentation.
_SKIPPED_STDLIB_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "lib2to3",
     "turtledemo", "__pycache__"}
)
_MIN_DOCSTRING_WORDS = 20
_BLANK_LINES = re.compile(r"\n\s*\n")
_HUB_NAME = re.compile(r"^[\w.-]+(/[\w.-]+)?(:[\w.-]+)?$")


def read_documents(path: str, text_column: str = "text") -> list[str]:
    """Reads the whole corpus named by `path` (see the module docstring for what it may be)
    into memory: for small corpora and tests; training reads chunks (`corpus_chunks`).

    Returns:
        One `str` per document, stripped, in a deterministic order; blank ones dropped.

    Raises:
        InputError: `path` is missing or unreadable, a record file lacks `text_column`,
            a hub dataset cannot be loaded, or no document has any text.
    """
    documents = [doc for chunk in corpus_chunks(path, text_column)[0] for doc in read_chunk(chunk)]
    if not documents:
        raise InputError(f"corpus {path!r} has no non-blank document")
    return documents


def corpus_chunks(
    corpus: str | Sequence[str], text_column: str = "text", streams: int = 1, chunk_bytes: int = 16 << 20
) -> list[list[Chunk]]:
    """The chunks of each of `streams` streams of `corpus` (`flaxft.data.shards`): a name
    as for `read_documents`, or the documents themselves.

    Raises:
        InputError: as `read_documents`, or a stream would get no document.
    """
    if not isinstance(corpus, str) or corpus == DEFAULT_CORPUS:
        documents = default_corpus() if isinstance(corpus, str) else [d for d in corpus]
        fingerprint = documents_fingerprint(documents)
        return record_chunks("documents", "", len(documents), sum(map(len, documents)), fingerprint, text_column,
                             streams, chunk_bytes, documents)
    dataset = hf_dataset(corpus)
    if dataset is None:
        return file_chunks(_corpus_files(corpus), text_column, streams, chunk_bytes)
    if text_column not in dataset.column_names:
        raise InputError(f"dataset {corpus!r} has no text column {text_column!r} (columns: {dataset.column_names})")
    num_bytes = dataset.data.column(text_column).nbytes
    return record_chunks("dataset", corpus, len(dataset), num_bytes, dataset._fingerprint, text_column, streams,
                         chunk_bytes)


def sample_documents(corpus: str | Sequence[str], text_column: str, max_bytes: int, chunk_bytes: int) -> list[str]:
    """About `max_bytes` of `corpus`'s text (a tokenizer's training sample): all of it when
    it is no larger, else whole chunks spread evenly over it, in corpus order.

    Raises:
        InputError: as `read_documents`.
    """
    chunks = corpus_chunks(corpus, text_column, 1, chunk_bytes)[0]
    total = sum(chunk.num_bytes for chunk in chunks)
    if total > max_bytes:
        wanted = max(1, min(len(chunks), round(len(chunks) * max_bytes / total)))
        chunks = [chunks[i] for i in np.unique(np.linspace(0, len(chunks) - 1, wanted).round().astype(int))]
    documents = [document for chunk in chunks for document in read_chunk(chunk)]
    if not documents:
        raise InputError(f"corpus {corpus if isinstance(corpus, str) else 'given'!r} has no non-blank document")
    return documents


def documents_fingerprint(documents: Sequence[str]) -> str:
    """Hex digest of the documents' text and boundaries."""
    digest = hashlib.sha256()
    for document in documents:
        encoded = document.encode()
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def default_corpus() -> list[str]:
    """The offline default corpus: cleaned standard-library docstrings, one per document.

    Files under the stdlib folder are walked in sorted order (test, tool and third-party
    folders skipped; files that fail to parse skipped). Each module, class and function
    docstring is cleaned (doctest blocks dropped, whitespace collapsed within paragraphs,
    paragraphs joined by newlines); documents with fewer than 20 words and exact
    duplicates are dropped. Collected once per process (about 2 s), then memoized.

    Returns:
        `list[str]`, identical for a given Python build.
    """
    return list(_stdlib_docstring_documents())


@functools.cache
def _stdlib_docstring_documents() -> tuple[str, ...]:
    documents: dict[str, None] = {}  # insertion-ordered set: drops exact duplicates
    for file in _stdlib_sources():
        for docstring in _docstrings(file):
            text = _clean_docstring(docstring)
            if len(text.split()) >= _MIN_DOCSTRING_WORDS:
                documents[text] = None
    return tuple(documents)


def _looks_like_path(path: str) -> bool:
    return not _HUB_NAME.match(path) or path.startswith((".", "~")) or path.endswith(
        SUPPORTED_SUFFIXES
    )


def hf_dataset(path: str):
    """The `datasets.Dataset` that `path` names (a saved folder or a hub name), else None."""
    folder = Path(path).expanduser()
    if folder.is_dir() and is_saved_dataset(folder):
        return load_train_split(path, "corpus")
    if folder.exists() or glob.has_magic(path) or _looks_like_path(path):
        return None
    return load_train_split(path, "corpus")


def _corpus_files(path: str) -> list[Path]:
    """The files `path` names: itself, every supported file below a folder, or glob matches."""
    target = Path(path).expanduser()
    if target.is_file():
        files = [target]
    elif target.is_dir():
        files = sorted(
            file for file in target.rglob("*")
            if file.is_file() and file.name.lower().endswith(SUPPORTED_SUFFIXES)
        )
    elif glob.has_magic(path):
        files = [Path(p) for p in sorted(glob.glob(os.path.expanduser(path), recursive=True))]
        files = [file for file in files if file.is_file()]
    else:
        raise InputError(f"corpus path {path!r} does not exist")
    if not files:
        raise InputError(f"corpus path {path!r} matches no {'/'.join(SUPPORTED_SUFFIXES)} file")
    return files


def _stdlib_sources() -> Iterator[Path]:
    """The standard library's .py files in sorted order, skipping test and tool folders."""
    root = sysconfig.get_paths()["stdlib"]
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in _SKIPPED_STDLIB_DIRS)
        for name in sorted(files):
            if name.endswith(".py"):
                yield Path(folder) / name


def _docstrings(file: Path) -> Iterator[str]:
    """Module, class and function docstrings of one source file (none if it fails to parse)."""
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (SyntaxError, ValueError, OSError):
        return
    pending = [tree]  # depth-first over statements only: far faster than `ast.walk`
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring:
                yield docstring
        for field in ("cases", "handlers", "finalbody", "orelse", "body"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                pending.extend(reversed(children))


def _clean_docstring(docstring: str) -> str:
    """Drops doctest blocks (a `>>>` line up to the next blank line) and collapses whitespace.

    Returns one line per paragraph.
    """
    kept, in_doctest = [], False
    for line in docstring.splitlines():
        stripped = line.strip()
        in_doctest = stripped.startswith(">>>") or (in_doctest and bool(stripped))
        if not in_doctest:
            kept.append(line)
    paragraphs = _BLANK_LINES.split("\n".join(kept))
    return "\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
