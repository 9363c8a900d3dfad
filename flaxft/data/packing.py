"""Packing: several short examples per row, so rows carry tokens instead of padding.

An example is the first `length` positions of its unpacked row ([CLS] ... [SEP]). A
`Packing` says which packed row and position each example moved to (`plan`); the
arrays of a packed split are made from it with `pack_inputs` (the model inputs),
`pack_tokens` (other per-token fields) and `slots` (one value per example, e.g. a
label), and outputs of the model on packed rows are moved back with `unpack_tokens`.
Models restart positions and block attention at segment boundaries (`segment_ids`, a
contract of every family), so an example encodes as it would alone.
"""

import dataclasses

import numpy as np

DEFAULT_MAX_SEGMENTS = 16  # examples per packed row, at most


@dataclasses.dataclass(frozen=True)
class Packing:
    """Where each of N examples went in R packed rows of `seq_len` positions.

    row, slot, start, length: [N] int64: the example's packed row, its place among that
    row's examples (0..K-1), its first position there, and its token count.
    """

    row: np.ndarray
    slot: np.ndarray
    start: np.ndarray
    length: np.ndarray
    num_rows: int
    seq_len: int


def plan(lengths: np.ndarray, seq_len: int, max_segments: int) -> Packing:
    """Best-fit decreasing: examples are taken longest first (ties in row order) and each
    goes into the open row with the least room that still fits it, else a new row; a
    row takes at most `max_segments` examples. Deterministic.

    lengths: [N] token counts, each at most seq_len.
    """
    lengths = np.asarray(lengths, np.int64)
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    if len(lengths) and lengths.max() > seq_len:
        raise ValueError(
            f"an example has {lengths.max()} tokens, more than the packed rows' {seq_len}"
        )
    open_rows: list[list[int]] = [[] for _ in range(seq_len + 1)]  # room -> rows with that room
    has_room = 0  # bit r set <=> open_rows[r] is non-empty
    room: list[int] = []
    filled: list[int] = []
    row = np.zeros(len(lengths), np.int64)
    slot = np.zeros(len(lengths), np.int64)
    start = np.zeros(len(lengths), np.int64)
    for example in np.argsort(-lengths, kind="stable").tolist():
        need = int(lengths[example])
        candidates = has_room >> need
        if candidates:
            space = need + (candidates & -candidates).bit_length() - 1
            r = open_rows[space].pop()
            if not open_rows[space]:
                has_room &= ~(1 << space)
        else:
            r = len(room)
            room.append(seq_len)
            filled.append(0)
        row[example], slot[example], start[example] = r, filled[r], seq_len - room[r]
        room[r] -= need
        filled[r] += 1
        if filled[r] < max_segments and room[r] > 0:
            open_rows[room[r]].append(r)
            has_room |= 1 << room[r]
    return Packing(row, slot, start, lengths, len(room), seq_len)


def pack_tokens(values: np.ndarray, packing: Packing, fill=0) -> np.ndarray:
    """[N, L, ...] per-position values of the unpacked rows -> [R, seq_len, ...] packed
    (`fill` where no example sits)."""
    out = np.full((packing.num_rows, packing.seq_len, *values.shape[2:]), fill, values.dtype)
    for i, (r, s, n) in enumerate(zip(packing.row, packing.start, packing.length)):
        out[r, s : s + n] = values[i, :n]
    return out


def unpack_tokens(values: np.ndarray, packing: Packing, row_len: int, fill=0) -> np.ndarray:
    """The inverse of `pack_tokens`: [R, seq_len, ...] -> [N, row_len, ...]."""
    out = np.full((len(packing.row), row_len, *values.shape[2:]), fill, values.dtype)
    for i, (r, s, n) in enumerate(zip(packing.row, packing.start, packing.length)):
        out[i, :n] = values[r, s : s + n]
    return out


def segment_ids(packing: Packing) -> np.ndarray:
    """[R, seq_len] int32: 1..k for the examples of a row in order, 0 on padding."""
    out = np.zeros((packing.num_rows, packing.seq_len), np.int32)
    for r, s, n, k in zip(packing.row, packing.start, packing.length, packing.slot):
        out[r, s : s + n] = k + 1
    return out


def slots(values: np.ndarray, packing: Packing, max_segments: int, fill=0) -> np.ndarray:
    """[N, ...] one value per example -> [R, max_segments, ...] by row and slot."""
    out = np.full((packing.num_rows, max_segments, *values.shape[1:]), fill, values.dtype)
    out[packing.row, packing.slot] = values
    return out


def pack_inputs(
    arrays: dict[str, np.ndarray], seq_len: int, max_segments: int
) -> tuple[Packing, dict]:
    """Plans the packing of unpacked rows (input_ids, attention_mask, token_type_ids [N,
    L], real tokens first) and packs those model inputs.

    Returns the Packing and input_ids, attention_mask, token_type_ids, segment_ids
    [R, seq_len] int32 (attention_mask = segment_ids > 0).
    """
    placed = plan(arrays["attention_mask"].sum(1), seq_len, max_segments)
    segments = segment_ids(placed)
    return placed, {
        "input_ids": pack_tokens(arrays["input_ids"], placed),
        "attention_mask": (segments > 0).astype(np.int32),
        "token_type_ids": pack_tokens(arrays["token_type_ids"], placed),
        "segment_ids": segments,
    }
