"""Dynamic MLM masking: rates, the 80/10/10 split, specials, whole words, determinism."""

import numpy as np
import pytest

from flaxft.data.masking import mask_example, num_to_mask

PAD, CLS, SEP, MASK = 0, 2, 3, 4
SPECIALS = (0, 1, 2, 3, 4)
VOCAB_SIZE = 1000
SEQ_LEN = 128
MAX_PREDICTIONS = 20


def random_rows(num_rows, seed=0):
    """Rows [CLS] text [SEP] [PAD]... of random length, ids >= 5, words of 1-3 pieces."""
    rng = np.random.default_rng(seed)
    input_ids = np.full((num_rows, SEQ_LEN), PAD, np.int32)
    word_starts = rng.random((num_rows, SEQ_LEN)) < 0.6
    for row in range(num_rows):
        length = int(rng.integers(4, SEQ_LEN - 1))
        input_ids[row, 0] = CLS
        input_ids[row, 1 : length + 1] = rng.integers(5, VOCAB_SIZE, length)
        input_ids[row, length + 1] = SEP
    special_mask = np.isin(input_ids, SPECIALS[:4])
    word_starts &= ~special_mask
    word_starts[:, 1] = True
    return input_ids, special_mask, word_starts


def mask_rows(rows, seeds, **overrides):
    input_ids, special_mask, word_starts = rows
    options = dict(mask_id=MASK, vocab_size=VOCAB_SIZE, special_ids=SPECIALS,
                   max_predictions=MAX_PREDICTIONS)
    options.update(overrides)
    outputs = [
        mask_example(input_ids[i], special_mask[i], word_starts[i], np.random.default_rng(seed),
                     **options)
        for i, seed in enumerate(seeds)
    ]
    return [np.stack(column) for column in zip(*outputs)]


@pytest.fixture(scope="module")
def rows():
    return random_rows(3000)


@pytest.mark.parametrize("whole_word", [False, True])
def test_mask_rate_split_and_specials(rows, whole_word):
    input_ids, special_mask, _ = rows
    seeds = range(len(input_ids))
    masked, positions, labels, weights = mask_rows(rows, seeds, whole_word=whole_word)
    assert masked.dtype == positions.dtype == labels.dtype == np.int32
    assert weights.dtype == np.float32
    assert positions.shape == (len(input_ids), MAX_PREDICTIONS)
    used = weights > 0
    candidates = (~special_mask).sum(axis=1)
    rate = used.sum() / candidates.sum()
    tolerance = 0.01 if not whole_word else 0.02  # words that overflow the budget are skipped
    assert abs(rate - 0.15) < tolerance, rate
    if not whole_word:
        expected = [num_to_mask(n, 0.15, MAX_PREDICTIONS) for n in candidates]
        assert (used.sum(axis=1) == expected).all()
    rows_index = np.repeat(np.arange(len(input_ids)), MAX_PREDICTIONS).reshape(positions.shape)
    chosen_rows, chosen_positions = rows_index[used], positions[used]
    assert not special_mask[chosen_rows, chosen_positions].any()
    assert (labels[used] == input_ids[chosen_rows, chosen_positions]).all()
    after = masked[chosen_rows, chosen_positions]
    as_mask = np.mean(after == MASK)
    unchanged = np.mean(after == labels[used])
    randomized = np.mean((after != MASK) & (after != labels[used]))
    assert abs(as_mask - 0.8) < 0.015
    assert abs(unchanged - 0.1) < 0.015
    assert abs(randomized - 0.1) < 0.015
    assert not np.isin(after[after != MASK], SPECIALS).any()
    unchosen = np.ones_like(special_mask)
    unchosen[chosen_rows, chosen_positions] = False
    assert (masked[unchosen] == input_ids[unchosen]).all()  # nothing else changes
    assert (positions[~used] == 0).all() and (labels[~used] == 0).all()
    assert (np.diff(used.astype(int), axis=1) <= 0).all()  # used slots come first
    assert (np.diff(positions, axis=1)[used[:, 1:]] > 0).all()  # ascending, unique


def test_whole_word_masking_takes_every_piece_of_a_chosen_word(rows):
    input_ids, special_mask, word_starts = rows
    _, positions, _, weights = mask_rows(rows, range(len(input_ids)), whole_word=True)
    for row in range(len(input_ids)):
        candidates = ~special_mask[row]
        word_of = np.cumsum(word_starts[row]) * candidates  # pieces share their start's number
        chosen = np.zeros(SEQ_LEN, bool)
        chosen[positions[row][weights[row] > 0]] = True
        for word in np.unique(word_of[chosen]):
            assert chosen[word_of == word].all()


def test_random_replacements_never_special_and_cover_the_rest():
    input_ids = np.array([CLS, *range(5, 15), SEP], np.int32)
    special_mask = np.isin(input_ids, SPECIALS)
    replaced = []
    for seed in range(400):
        masked, positions, _, weights = mask_example(
            input_ids, special_mask, ~special_mask, np.random.default_rng(seed), mask_id=MASK,
            vocab_size=10, special_ids=SPECIALS, max_predictions=10, mask_rate=1.0,
        )
        replaced.extend(masked[masked != input_ids].tolist())
    replaced = np.array(replaced)
    assert set(replaced[replaced != MASK].tolist()) == {5, 6, 7, 8, 9}


def test_budget_rounding_cap_and_empty_rows():
    assert num_to_mask(0, 0.15, 20) == 0
    assert num_to_mask(3, 0.15, 20) == 1  # at least one
    assert num_to_mask(100, 0.15, 20) == 15
    assert num_to_mask(1000, 0.15, 20) == 20  # at most max_predictions
    padding = np.zeros(8, np.int32)
    masked, positions, labels, weights = mask_example(
        padding, np.ones(8, bool), np.zeros(8, bool), np.random.default_rng(0), mask_id=MASK,
        vocab_size=VOCAB_SIZE, special_ids=SPECIALS, max_predictions=4,
    )
    assert (masked == padding).all() and not weights.any() and not positions.any()


def test_same_seed_same_mask_other_seed_other_mask(rows):
    first = mask_rows(rows, [(7, 0, i) for i in range(50)], whole_word=True)
    again = mask_rows(rows, [(7, 0, i) for i in range(50)], whole_word=True)
    next_epoch = mask_rows(rows, [(7, 1, i) for i in range(50)], whole_word=True)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert (first[1] != next_epoch[1]).any(axis=1).mean() > 0.9
