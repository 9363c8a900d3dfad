"""From tokenized records to fixed-size rows: the `Features` container every fine-tuning
task fills, the row template, pair truncation and stacking."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from flaxft.data.tokenizer import special_token_ids
from flaxft.errors import InputError


@dataclasses.dataclass
class Features:
    """A split turned into fixed-size arrays.

    arrays: the batch fields the loader serves, each [N, ...] (N rows).
    host: what evaluation needs on the host (example indices, offsets, label names,
        references to the records); never sent to devices.
    """

    arrays: dict[str, np.ndarray]
    host: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))


def plain_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` itself, or a copy with truncation and padding off if it has either
    (tasks truncate and pad themselves; the caller's tokenizer is never changed)."""
    if tokenizer.truncation is None and tokenizer.padding is None:
        return tokenizer
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_truncation()
    copy.no_padding()
    return copy


@dataclasses.dataclass(frozen=True)
class RowTemplate:
    """How one fine-tuning row is laid out, BERT's way: [CLS] A [SEP] (B [SEP]) [PAD]...,
    token types 0 for the first part, 1 for the second."""

    seq_len: int
    cls: int
    sep: int
    pad: int

    @classmethod
    def of(cls, tokenizer: Tokenizer, seq_len: int) -> "RowTemplate":
        if seq_len < 4:
            raise InputError(f"seq_len must be at least 4 for fine-tuning, got {seq_len}")
        ids = special_token_ids(tokenizer)
        return cls(seq_len, ids["cls"], ids["sep"], ids["pad"])

    def budget(self, pair: bool) -> int:
        """Room for text tokens: seq_len minus 2 (single) or 3 (pair) special tokens."""
        return self.seq_len - (3 if pair else 2)

    def row(self, first: Sequence[int], second: Sequence[int] | None = None):
        """(input_ids, token_type_ids, length) of one row, as lists padded to seq_len;
        the parts must already fit."""
        ids = [self.cls, *first, self.sep]
        types = [0] * len(ids)
        if second is not None:
            ids += [*second, self.sep]
            types += [1] * (len(second) + 1)
        length = len(ids)
        assert length <= self.seq_len, (length, self.seq_len)
        padding = self.seq_len - length
        return ids + [self.pad] * padding, types + [0] * padding, length


def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths after "longest first" truncation to at most `budget` tokens in total, as
    Hugging Face tokenizers computes it: the longer part is cut to `budget` minus the
    shorter; if both together still do not fit, each gets half the budget, the longer
    (the second on ties) the odd token."""
    if len_a + len_b <= budget:
        return len_a, len_b
    shorter, longer = min(len_a, len_b), max(len_a, len_b)
    longer = max(shorter, budget - shorter)
    if shorter + longer > budget:
        shorter, longer = budget // 2, budget - budget // 2
    return (longer, shorter) if len_a > len_b else (shorter, longer)


def stack_rows(rows: list[tuple[list[int], list[int], int]], seq_len: int) -> dict[str, np.ndarray]:
    """input_ids, token_type_ids, attention_mask [N, L] int32 from `RowTemplate.row` outputs."""
    n = len(rows)
    input_ids = np.array([r[0] for r in rows], np.int32).reshape(n, seq_len)
    token_type_ids = np.array([r[1] for r in rows], np.int32).reshape(n, seq_len)
    lengths = np.array([r[2] for r in rows], np.int64)
    attention_mask = (np.arange(seq_len) < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }


def padding_fraction(attention_mask: np.ndarray) -> float:
    """Fraction of the [N, L] positions that are padding."""
    return float(1.0 - attention_mask.mean()) if attention_mask.size else 0.0
