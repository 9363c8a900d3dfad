"""Vectorized index helpers for ragged data stored flat (lengths + offsets)."""

import numpy as np


def offsets(lengths: np.ndarray) -> np.ndarray:
    """[n + 1] int64 running sum of `lengths` ([n] ints), starting at 0."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[sum(lengths)] int64: `arange(start, start + length)` for each pair, concatenated."""
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    return np.repeat(np.asarray(starts, dtype=np.int64) - ends + lengths, lengths) + np.arange(
        total
    )
