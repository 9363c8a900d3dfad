"""On-disk cache of array dataclasses (`.npz` files), keyed by hashes of what made them.

Writes are atomic (`flaxft.files.replaced_atomically`), so a reader sees a complete file
or none, and hosts sharing a folder may write the same entry.
"""

import dataclasses
import hashlib
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from tokenizers import Tokenizer

from flaxft.files import replaced_atomically

# Part of every key: bump when the meaning or layout of cached arrays changes.
CACHE_FORMAT_VERSION = 1

T = TypeVar("T")
_log = logging.getLogger(__name__)


def cache_key(*parts: object) -> str:
    """A 20-hex-digit key from JSON-serializable `parts` (and CACHE_FORMAT_VERSION)."""
    text = json.dumps([CACHE_FORMAT_VERSION, *parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """Hex digest of the tokenizer's full serialization (`tokenizer.to_str()`)."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()


def load_or_build(path: Path | None, cls: type[T], build: Callable[[], T]) -> T:
    """The `cls` cached at `path`, else `build()`, saved to `path` (None: no caching)."""
    if path is not None:
        value = _load_dataclass(path, cls)
        if value is not None:
            _log.info("loaded %s from %s", cls.__name__, path)
            return value
    value = build()
    if path is not None:
        _save_dataclass(path, value)
        _log.info("cached %s at %s", cls.__name__, path)
    return value


def _save_dataclass(path: Path, value: object) -> None:
    """Writes the numpy-array fields of dataclass `value` to `path` (.npz), atomically."""
    arrays = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
    with replaced_atomically(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays)


def _load_dataclass(path: Path, cls: type[T]) -> T | None:
    """The dataclass `cls` saved at `path`, or None if there is no readable entry."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return cls(**{name: arrays[name] for name in arrays.files})
    except (OSError, ValueError, TypeError, zipfile.BadZipFile) as e:
        _log.warning("ignoring unreadable cache entry %s: %s", path, e)
        return None
