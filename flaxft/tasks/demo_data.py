"""Offline demo data for the three fine-tuning tasks, made from the Python standard
library's own docstrings (nothing downloaded; the same files for a given Python build).

- classification (`train.csv`, `validation.csv`: text,label): which family of standard
  library modules a docstring comes from: gui (tkinter, turtle), email (email, smtplib,
  imaplib, ...), concurrency (asyncio, threading, multiprocessing, ...), web (http,
  urllib, xmlrpc, ...), numbers (decimal, fractions, statistics, ...). Each class has the
  same number of docstrings. Topic words make it learnable; shared vocabulary (every
  family talks about objects, arguments, errors) keeps it from being trivial.
- topics (`train.csv`, `validation.csv`: text,label; not written by default): the same
  question for other module families and much shorter texts, the first sentence of a
  docstring (6 to 40 words): files (os, pathlib, shutil, zipfile, ...), text (re, string,
  difflib, codecs, ...), formats (json, csv, xml, pickle, sqlite3, ...), devtools
  (unittest, doctest, pdb, inspect, ast, ...), system (subprocess, signal, logging,
  importlib, ...).
  `benchmarks/finetune_vs_torch.py` uses it as a task nothing was tuned on.
- ner (`train.jsonl`, `validation.jsonl`: tokens, ner_tags): docstring sentences split
  into words, tagged BIO with two types: STR, the words of a quoted span ('utf-8',
  "strict", `name`: up to 5 words between matching quotes), and CODE, identifier-like
  words outside quotes (with an underscore, dotted names like os.path.join, or a call
  like f()). The tags depend only on what an uncased tokenizer keeps, and STR needs the
  surrounding quotes (context), not just the word itself.
- qa (`train.jsonl`, `validation.jsonl`: SQuAD layout id, question, context, answers):
  cloze questions. The context is a docstring (cut to 150 words, so many exceed a
  128-token window); the answer is one word that occurs exactly once in it (identifier-
  like or quoted words preferred, else a word of six or more letters); the question
  quotes up to six words either side of it with the answer blanked out. A model must
  find the quoted passage in the context and copy the blanked word.

Splits are fixed by a CRC32 of each text (about one in five to validation).
`python -m flaxft.tasks.demo_data OUT_DIR` writes the first three under OUT_DIR/<task>/
(`--tasks topics` the fourth).
"""

import argparse
import collections
import csv
import functools
import json
import os
import re
import sysconfig
import zlib
from pathlib import Path

from flaxft.data import corpus
from flaxft.data.tokenize import split_sentences
from flaxft.files import write_text_atomically

TASKS = ("classification", "ner", "qa")  # written by default
ALL_TASKS = (*TASKS, "topics")

FAMILIES = {
    "gui": ("tkinter", "turtle"),
    "email": ("email", "smtplib", "imaplib", "poplib", "mailbox", "nntplib", "mimetypes", "smtpd"),
    "concurrency": (
        "asyncio",
        "concurrent",
        "threading",
        "multiprocessing",
        "queue",
        "sched",
        "selectors",
        "_threading_local",
    ),
    "web": (
        "http",
        "urllib",
        "wsgiref",
        "xmlrpc",
        "ftplib",
        "html",
        "cgi",
        "webbrowser",
        "socketserver",
    ),
    "numbers": (
        "_pydecimal",
        "decimal",
        "fractions",
        "statistics",
        "numbers",
        "random",
        "cmath",
        "_pylong",
        "colorsys",
    ),
}
TOPIC_FAMILIES = {
    "files": ("os", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "filecmp", "fileinput", "stat",
              "zipfile", "tarfile", "gzip", "bz2", "lzma", "zipimport", "posixpath", "ntpath", "genericpath"),
    "text": ("re", "string", "textwrap", "difflib", "unicodedata", "stringprep", "codecs", "locale",
             "gettext", "encodings", "shlex"),
    "formats": ("json", "csv", "configparser", "tomllib", "plistlib", "pickle", "pickletools", "copyreg",
                "shelve", "dbm", "sqlite3", "xml", "netrc"),
    "devtools": ("unittest", "doctest", "pdb", "bdb", "trace", "tracemalloc", "profile", "cProfile",
                 "pstats", "timeit", "inspect", "ast", "dis", "pydoc", "traceback", "warnings"),
    "system": ("subprocess", "signal", "platform", "sysconfig", "ctypes", "logging", "getpass", "resource",
               "importlib", "pkgutil", "runpy", "site"),
}
_MAX_TEXT_WORDS = 64
_SENTENCE_WORDS = (6, 40)
_MAX_CONTEXT_WORDS = 150
_VALIDATION_SHARE = 5  # one in five

# A word: letters/digits/underscores, joined by inner apostrophes or dots, maybe "()".
_WORD = re.compile(r"\w+(?:['.]\w+)*(?:\(\))?|[^\w\s]")
_QUOTES = ("'", '"', "`")
_MAX_QUOTED_WORDS = 5


def _is_validation(text: str) -> bool:
    return zlib.crc32(text.encode()) % _VALIDATION_SHARE == 0


def _split(rows: list[dict], key: str) -> tuple[list[dict], list[dict]]:
    train = [row for row in rows if not _is_validation(key_of(row, key))]
    validation = [row for row in rows if _is_validation(key_of(row, key))]
    return train, validation


def key_of(row: dict, key: str) -> str:
    value = row[key]
    return " ".join(value) if isinstance(value, list) else str(value)


# ----------------------------------------------------------------------------- classification


def _items(families: dict[str, tuple[str, ...]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(families.items())


@functools.cache
def _family_docstrings(families: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[tuple[str, str], ...]:
    """(family, cleaned docstring) of every docstring of the families' modules (memoized: ~3 s)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    owner = {module: family for family, modules in families for module in modules}
    found = []
    for file in corpus._stdlib_sources():
        family = owner.get(file.relative_to(root).parts[0].removesuffix(".py"))
        if family is not None:
            found.extend((family, corpus._clean_docstring(docstring)) for docstring in corpus._docstrings(file))
    return tuple(found)


def _balanced(labelled: list[tuple[str, str]]) -> tuple[list[dict], list[dict]]:
    """(train, validation) records {"text", "label"} of (label, text) pairs: texts found under
    one label only, the same number per label, in a fixed order."""
    by_family: dict[str, dict[str, None]] = collections.defaultdict(dict)
    for family, text in labelled:
        by_family[family][text] = None
    # Drop texts found in more than one family; then the same number per family.
    owners = collections.Counter(text for texts in by_family.values() for text in texts)
    per_family = {
        family: sorted(
            (t for t in texts if owners[t] == 1), key=lambda t: (zlib.crc32(t.encode()), t)
        )
        for family, texts in by_family.items()
    }
    size = min(len(texts) for texts in per_family.values())
    rows = [
        {"text": text, "label": family}
        for family in sorted(per_family)
        for text in per_family[family][:size]
    ]
    rows.sort(key=lambda row: (zlib.crc32(row["text"].encode()) >> 8, row["text"]))
    return _split(rows, "text")


def classification_records() -> tuple[list[dict], list[dict]]:
    """(train, validation) records {"text", "label"}: the first 64 words of each docstring
    of at least 20 words, balanced over FAMILIES, deterministic."""
    texts = []
    for family, docstring in _family_docstrings(_items(FAMILIES)):
        words = docstring.split()
        if len(words) >= 20:
            texts.append((family, " ".join(words[:_MAX_TEXT_WORDS])))
    return _balanced(texts)


def topic_records() -> tuple[list[dict], list[dict]]:
    """(train, validation) records {"text", "label"}: the first sentence of each docstring
    (6 to 40 words), balanced over TOPIC_FAMILIES, deterministic."""
    texts = []
    for family, docstring in _family_docstrings(_items(TOPIC_FAMILIES)):
        sentences = split_sentences(docstring)
        if sentences and _SENTENCE_WORDS[0] <= len(sentences[0].split()) <= _SENTENCE_WORDS[1]:
            texts.append((family, sentences[0]))
    return _balanced(texts)


# ----------------------------------------------------------------------------- NER


def words_of(sentence: str) -> list[str]:
    """The sentence's words and punctuation marks, in order."""
    return _WORD.findall(sentence)


def _is_code(word: str) -> bool:
    if word.endswith("()"):
        return True
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", word):
        return False
    parts = word.split(".")
    return (
        "_" in word.strip("_")
        or word.startswith("_")
        and len(word) > 2
        or (
            len(parts) > 1
            and max(len(p) for p in parts) >= 2
            and not all(len(p) == 1 for p in parts)
        )
    )


def tag_words(words: list[str]) -> list[str]:
    """BIO tags: STR for words of a quoted span (the quotes themselves are O), else CODE
    for identifier-like words, else O."""
    tags = ["O"] * len(words)
    i = 0
    while i < len(words):
        if words[i] in _QUOTES:
            close = next(
                (
                    j
                    for j in range(i + 2, min(i + 2 + _MAX_QUOTED_WORDS, len(words)))
                    if words[j] == words[i]
                ),
                None,
            )
            if close is not None and not any(w in _QUOTES for w in words[i + 1 : close]):
                tags[i + 1] = "B-STR"
                for j in range(i + 2, close):
                    tags[j] = "I-STR"
                i = close + 1
                continue
        if _is_code(words[i]):
            tags[i] = "B-CODE"
        i += 1
    return tags


def _prose(words: list[str]) -> bool:
    """Mostly words, at most two pairs of each quote mark (drops code-like sentences)."""
    quotes = [sum(w == q for w in words) for q in _QUOTES]
    wordy = sum(w[0].isalpha() for w in words) >= 0.6 * len(words)
    return wordy and all(n % 2 == 0 and n <= 4 for n in quotes)


def ner_records() -> tuple[list[dict], list[dict]]:
    """(train, validation) records {"tokens", "ner_tags"}: every docstring sentence of
    5..40 words with an entity, plus one in three of those without."""
    rows, seen = [], set()
    for document in corpus.default_corpus():
        for sentence in split_sentences(document):
            words = words_of(sentence)
            if not 5 <= len(words) <= 40 or sentence in seen or not _prose(words):
                continue
            seen.add(sentence)
            tags = tag_words(words)
            if all(tag == "O" for tag in tags) and zlib.crc32(sentence.encode()) % 3:
                continue
            rows.append({"tokens": words, "ner_tags": tags})
    return _split(rows, "tokens")


# ----------------------------------------------------------------------------- QA

_CONTEXT_WINDOW = 6
_SPAN = re.compile(r"\S+")


def _candidate(word: str, before: str, after: str) -> int:
    """Preference of a word as an answer: 2 identifier-like or quoted, 1 long word, 0 none."""
    if _is_code(word) or (before in _QUOTES and after == before):
        return 2
    return 1 if len(word) >= 6 and word.isalpha() else 0


def qa_records() -> tuple[list[dict], list[dict]]:
    """(train, validation) SQuAD-layout records, one cloze question per docstring."""
    rows = []
    for number, document in enumerate(corpus.default_corpus()):
        spans = list(_SPAN.finditer(document))
        context = document[: spans[min(len(spans), _MAX_CONTEXT_WORDS) - 1].end()]
        matches = [m for m in _WORD.finditer(context)]
        counts = collections.Counter(m.group() for m in matches)
        ranked = []
        for k, m in enumerate(matches):
            before = matches[k - 1].group() if k else ""
            after = matches[k + 1].group() if k + 1 < len(matches) else ""
            preference = _candidate(m.group(), before, after)
            if preference and counts[m.group()] == 1 and _CONTEXT_WINDOW <= k < len(matches) - 2:
                ranked.append((preference, k))
        if not ranked:
            continue
        top = max(preference for preference, _ in ranked)
        choices = [k for preference, k in ranked if preference == top]
        k = choices[zlib.crc32(context.encode()) % len(choices)]
        answer = matches[k]
        left = context[matches[max(0, k - _CONTEXT_WINDOW)].start() : answer.start()].strip()
        right = context[
            answer.end() : matches[min(len(matches), k + _CONTEXT_WINDOW + 1) - 1].end()
        ].strip()
        question = f"Which word fills the blank: {left} ___ {right}"
        rows.append(
            {
                "id": f"stdlib-{number}",
                "question": " ".join(question.split()),
                "context": context,
                "answers": {"text": [answer.group()], "answer_start": [answer.start()]},
            }
        )
    return _split(rows, "context")


# ----------------------------------------------------------------------------- files


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _csv(rows: list[dict]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def make_task_data(task: str, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes `task`'s train and validation files into `out_dir`; returns their paths
    ({"train": ..., "validation": ...}). Existing files of the same names are replaced."""
    out = Path(out_dir)
    if task == "classification":
        splits, suffix, render = classification_records(), ".csv", _csv
    elif task == "topics":
        splits, suffix, render = topic_records(), ".csv", _csv
    elif task == "ner":
        splits, suffix, render = ner_records(), ".jsonl", _jsonl
    elif task == "qa":
        splits, suffix, render = qa_records(), ".jsonl", _jsonl
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {ALL_TASKS}")
    paths = {}
    for name, rows in zip(("train", "validation"), splits):
        paths[name] = out / f"{name}{suffix}"
        write_text_atomically(paths[name], render(rows))
    return paths


def make_demo_data(out_dir: str | os.PathLike, tasks=TASKS) -> dict[str, dict[str, Path]]:
    """Writes every task's files under out_dir/<task>/."""
    return {task: make_task_data(task, Path(out_dir) / task) for task in tasks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flaxft.tasks.demo_data",
        description="Writes the offline demo data of the fine-tuning tasks (from the standard library's "
                    "docstrings) under OUT_DIR/<task>/.")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write into (made if missing)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(ALL_TASKS)}")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        parser.error(f"--tasks: {unknown[0]!r} is not one of {', '.join(ALL_TASKS)}")
    for task, paths in make_demo_data(args.out_dir, tasks).items():
        print(task, *(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
