"""Dynamic masked-language-model masking of one row, drawn from a caller-given generator.

BERT's recipe: of the real non-special tokens, `round(mask_rate * count)` (at least 1,
at most `max_predictions`) are chosen; each chosen token independently becomes the mask
token ([MASK], <mask>) with probability 0.8, a random non-special token with 0.1, or
stays itself with 0.1.
With whole-word masking, whole words (a word start and the pieces after it) are drawn
in random order and taken while they fit the budget; a word that would overflow it is
skipped, as in the original `create_pretraining_data.py`.
"""

from collections.abc import Collection

import numpy as np

from flaxft.data.arrays import concat_ranges

MASK_PROB, RANDOM_PROB = 0.8, 0.1  # of chosen tokens; the remaining 0.1 keep their id


def mask_example(
    input_ids: np.ndarray,
    special_mask: np.ndarray,
    word_starts: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Collection[int],
    max_predictions: int,
    mask_rate: float = 0.15,
    whole_word: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Masks one row; the output depends only on the inputs and the state of `rng`.

    Args:
        input_ids: [L] int, the unmasked row.
        special_mask: [L] bool, True on the cls, sep and pad tokens: never chosen.
        word_starts: [L] bool, True on the first piece of each word (whole-word masking).
        rng: the source of all randomness.
        mask_id: the mask token's id ([MASK], <mask>).
        vocab_size: random replacements are drawn from [0, vocab_size) ...
        special_ids: ... minus these ids.
        max_predictions: M, the number of prediction slots.
        mask_rate: fraction of real non-special tokens to choose.
        whole_word: choose whole words instead of single pieces.

    Returns:
        masked_input_ids [L] int32; masked_positions [M] int32, ascending; masked_labels
        [M] int32, the original ids there; masked_weights [M] float32, 1 on used slots.
        Unused slots hold position 0, label 0, weight 0.
    """
    positions = _choose_positions(
        special_mask, word_starts, rng, max_predictions, mask_rate, whole_word
    )
    num_chosen = len(positions)
    masked_input_ids = input_ids.astype(np.int32, copy=True)
    action = rng.random(num_chosen)
    to_mask = positions[action < MASK_PROB]
    to_random = positions[(action >= MASK_PROB) & (action < MASK_PROB + RANDOM_PROB)]
    masked_input_ids[to_mask] = mask_id
    masked_input_ids[to_random] = _random_ordinary_ids(rng, len(to_random), vocab_size, special_ids)

    masked_positions = np.zeros(max_predictions, np.int32)
    masked_labels = np.zeros(max_predictions, np.int32)
    masked_weights = np.zeros(max_predictions, np.float32)
    masked_positions[:num_chosen] = positions
    masked_labels[:num_chosen] = input_ids[positions]
    masked_weights[:num_chosen] = 1.0
    return masked_input_ids, masked_positions, masked_labels, masked_weights


def num_to_mask(num_candidates: int, mask_rate: float, max_predictions: int) -> int:
    """How many of `num_candidates` real non-special tokens to choose (0 if none exist)."""
    if num_candidates == 0:
        return 0
    return min(max_predictions, max(1, round(mask_rate * num_candidates)))


def _choose_positions(
    special_mask: np.ndarray,
    word_starts: np.ndarray,
    rng: np.random.Generator,
    max_predictions: int,
    mask_rate: float,
    whole_word: bool,
) -> np.ndarray:
    """Ascending [K] int64 positions to predict, K <= max_predictions."""
    candidates = np.flatnonzero(~special_mask)
    budget = num_to_mask(len(candidates), mask_rate, max_predictions)
    if budget == 0:
        return candidates[:0]
    # Words: a word start, or a candidate not right after another candidate, opens a word.
    opens_word = np.ones(len(candidates), bool)
    if whole_word:
        opens_word[1:] = word_starts[candidates[1:]] | (np.diff(candidates) != 1)
    word_first = np.flatnonzero(opens_word)
    word_length = np.diff(word_first, append=len(candidates))
    chosen, total = [], 0
    lengths = word_length.tolist()
    for word in rng.permutation(len(word_first)).tolist():
        if total + lengths[word] <= budget:
            chosen.append(word)
            total += lengths[word]
            if total == budget:
                break
    return np.sort(candidates[concat_ranges(word_first[chosen], word_length[chosen])])


def _random_ordinary_ids(
    rng: np.random.Generator, count: int, vocab_size: int, special_ids: Collection[int]
) -> np.ndarray:
    """[count] int32 ids drawn uniformly from [0, vocab_size) without `special_ids`."""
    excluded = sorted(set(special_ids))
    ids = rng.integers(0, vocab_size - len(excluded), count)
    for special in excluded:  # shift past each excluded id, in ascending order
        ids += ids >= special
    return ids.astype(np.int32)
