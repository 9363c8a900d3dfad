"""From tokenized records to fixed-size rows: the `Features` container every fine-tuning
task fills, the row template, pair truncation and stacking."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from flaxft.data.tokenizer import RowLayout, row_layouts, special_token_ids
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


@dataclasses.dataclass(frozen=True)
class RowTemplate:
    """How one fine-tuning row is laid out: the tokenizer's special tokens around one or
    two texts, as its post-processor places them (`row_layouts`: BERT [CLS] A [SEP]
    (B [SEP]) with token types 0, then 1 from B on; RoBERTa and XLM-R <s> A </s>
    (</s> B </s>), all 0), then padding."""

    seq_len: int
    single: RowLayout
    pair: RowLayout
    pad: int

    @classmethod
    def of(cls, tokenizer: Tokenizer, seq_len: int) -> "RowTemplate":
        """The template of `tokenizer` for rows of `seq_len` tokens.

        Raises:
            InputError: the tokenizer lacks a special token (`special_token_ids`), or a
                pair's special tokens leave no room for text in `seq_len`.
        """
        pad = special_token_ids(tokenizer)["pad"]
        single, pair = row_layouts(tokenizer)
        if seq_len <= pair.num_specials:
            raise InputError(
                f"seq_len must be at least {pair.num_specials + 1} for fine-tuning with this "
                f"tokenizer ({pair.num_specials} special tokens in a pair), got {seq_len}"
            )
        return cls(seq_len, single, pair, pad)

    def layout(self, pair: bool) -> RowLayout:
        """The layout of a row of two texts (`pair`) or one."""
        return self.pair if pair else self.single

    def budget(self, pair: bool) -> int:
        """Room for text tokens: seq_len minus the special tokens of a pair or a single text."""
        return self.seq_len - self.layout(pair).num_specials

    def text_starts(self, *lengths: int) -> list[int]:
        """Row positions of the first token of each text, for texts of `lengths` tokens
        (one or two)."""
        specials = self.layout(len(lengths) == 2).specials
        starts, position = [], 0
        for before, length in zip(specials, lengths):
            starts.append(position + len(before))
            position = starts[-1] + length
        return starts

    def row(self, first: Sequence[int], second: Sequence[int] | None = None):
        """(input_ids, token_type_ids, length) of one row, as lists padded to seq_len;
        the parts must already fit."""
        texts = [first] if second is None else [first, second]
        layout = self.layout(second is not None)
        ids, types = [], []
        for specials, special_types, text, text_type in zip(
            layout.specials, layout.special_types, texts, layout.text_types
        ):
            ids += [*specials, *text]
            types += [*special_types, *[text_type] * len(text)]
        ids += layout.specials[-1]
        types += layout.special_types[-1]
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
