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
import json
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from flaxft.data.hub import is_saved_dataset, load_named, load_saved
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
    """Reads the corpus named by `path` (see the module docstring for what it may be).

    Returns:
        One `str` per document, stripped, in a deterministic order; blank ones dropped.

    Raises:
        InputError: `path` is missing or unreadable, a record file lacks `text_column`,
            a hub dataset cannot be loaded, or no document has any text.
    """
    if path == DEFAULT_CORPUS:
        return default_corpus()
    dataset = _hf_dataset(path)
    if dataset is not None:
        documents = _dataset_column(dataset, text_column, path)
    else:
        documents = [doc for file in _corpus_files(path) for doc in _read_file(file, text_column)]
    documents = [document.strip() for document in documents if document.strip()]
    if not documents:
        raise InputError(f"corpus {path!r} has no non-blank document")
    return documents


def corpus_fingerprint(path: str, text_column: str = "text") -> str:
    """A hex digest that changes whenever the documents `read_documents(path)` returns could.

    Files: their resolved paths, sizes and modification times (content is not read).
    Hugging Face datasets (on disk or from the hub): the dataset's `_fingerprint`.
    The default corpus: the Python version and a hash of its text. `text_column` is
    part of the digest for everything but the default corpus.
    """
    if path == DEFAULT_CORPUS:
        parts = [DEFAULT_CORPUS, sys.version, documents_fingerprint(default_corpus())]
    else:
        dataset = _hf_dataset(path)
        if dataset is not None:
            parts = ["hf-dataset", path, dataset._fingerprint, text_column]
        else:
            parts = ["files", text_column] + [
                f"{file.resolve()}:{file.stat().st_size}:{file.stat().st_mtime_ns}"
                for file in _corpus_files(path)
            ]
    return _sha256(json.dumps(parts))


def documents_fingerprint(documents: list[str]) -> str:
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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _looks_like_path(path: str) -> bool:
    return not _HUB_NAME.match(path) or path.startswith((".", "~")) or path.endswith(
        SUPPORTED_SUFFIXES
    )


def _hf_dataset(path: str):
    """The `datasets.Dataset` that `path` names (a saved folder or a hub name), else None."""
    folder = Path(path).expanduser()
    if folder.is_dir() and is_saved_dataset(folder):
        import datasets

        dataset = load_saved(folder, "corpus")
        if not isinstance(dataset, datasets.DatasetDict):
            return dataset
        if "train" not in dataset:
            raise InputError(f"dataset {path!r} has no 'train' split (has {sorted(dataset)})")
        return dataset["train"]
    if folder.exists() or glob.has_magic(path) or _looks_like_path(path):
        return None
    return load_named(path, "corpus", split="train")


def _dataset_column(dataset, text_column: str, path: str) -> list[str]:
    if text_column not in dataset.column_names:
        raise InputError(
            f"dataset {path!r} has no text column {text_column!r} "
            f"(columns: {dataset.column_names})"
        )
    return [text or "" for text in dataset[text_column]]


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


def _read_file(file: Path, text_column: str) -> list[str]:
    suffix = file.suffix.lower()
    try:
        if suffix in RECORD_SUFFIXES:
            return _read_records(file, suffix, text_column)
        return _BLANK_LINES.split(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"cannot read corpus file {str(file)!r}: {e}") from e


def _read_records(file: Path, suffix: str, text_column: str) -> list[str]:
    import pandas as pd

    if suffix in (".jsonl", ".json"):
        return _read_json_lines(file, text_column)
    if suffix == ".parquet":
        frame = pd.read_parquet(file)
    else:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    if text_column not in frame.columns:
        raise InputError(
            f"corpus file {str(file)!r} has no text column {text_column!r} "
            f"(columns: {list(frame.columns)})"
        )
    return ["" if text is None else str(text) for text in frame[text_column].tolist()]


def _read_json_lines(file: Path, text_column: str) -> list[str]:
    """The `text_column` of every JSON object in a JSON-lines file; errors name the line."""
    texts = []
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"corpus file {str(file)!r}: line {number} is not JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_column not in record:
                raise InputError(f"corpus file {str(file)!r}: line {number} has no text column {text_column!r}")
            texts.append("" if record[text_column] is None else str(record[text_column]))
    return texts


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
