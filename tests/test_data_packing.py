"""Best-fit decreasing packing: every example placed once, rows never overfull."""

import numpy as np
import pytest

from flaxft.data import packing


@pytest.mark.parametrize("seed", range(5))
def test_plan_places_every_example_once_within_capacity(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 33, size=200)
    placed = packing.plan(lengths, seq_len=32, max_segments=4)
    cells = {(r, s) for r, s in zip(placed.row.tolist(), placed.slot.tolist())}
    assert len(cells) == len(lengths)  # no two examples share a slot
    for r in range(placed.num_rows):
        here = np.flatnonzero(placed.row == r)
        order = here[np.argsort(placed.slot[here])]
        assert placed.slot[order].tolist() == list(range(len(here))) and len(here) <= 4
        ends = np.cumsum(lengths[order])
        assert placed.start[order].tolist() == [0, *ends[:-1].tolist()] and ends[-1] <= 32
    # Bin packing needs at least total / capacity rows; best fit stays close to it.
    assert placed.num_rows <= 1.15 * np.ceil(lengths.sum() / 32) + 1
    again = packing.plan(lengths, seq_len=32, max_segments=4)
    np.testing.assert_array_equal(placed.row, again.row)


def test_pack_and_unpack_are_inverse():
    lengths = np.array([3, 5, 2, 6])
    values = np.arange(4 * 6 * 2).reshape(4, 6, 2)
    placed = packing.plan(lengths, seq_len=8, max_segments=3)
    packed = packing.pack_tokens(values, placed, fill=-1)
    assert packed.shape == (placed.num_rows, 8, 2) and (packed == -1).sum() == 2 * (8 * placed.num_rows - 16)
    back = packing.unpack_tokens(packed, placed, row_len=6, fill=-1)
    for i, n in enumerate(lengths):
        np.testing.assert_array_equal(back[i, :n], values[i, :n])
        assert (back[i, n:] == -1).all()
    segments = packing.segment_ids(placed)
    assert (segments > 0).sum() == lengths.sum()
    for r, s, n, k in zip(placed.row, placed.start, placed.length, placed.slot):
        assert (segments[r, s : s + n] == k + 1).all()
    np.testing.assert_array_equal(
        packing.slots(np.array([10, 11, 12, 13]), placed, 3, fill=-1)[placed.row, placed.slot], [10, 11, 12, 13]
    )


def test_plan_rejects_examples_longer_than_a_row():
    with pytest.raises(ValueError, match="more than"):
        packing.plan(np.array([4, 9]), seq_len=8, max_segments=2)
