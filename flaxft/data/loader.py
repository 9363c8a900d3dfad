"""Deterministic, checkpointable, per-host pretraining batches with dynamic masking.

The global example stream is the concatenation of epochs; epoch e visits the examples in
the order `np.random.default_rng([seed, e]).permutation(N)` (identity without shuffle).
Global batch s is stream positions [s*G, (s+1)*G); host p of P takes the contiguous
slice [p*G/P, (p+1)*G/P) of it. An example's mask is drawn from a generator seeded by
(seed, epoch, example index) alone, so batches depend only on the step: never on the
host count, on prefetching, or on whether the run was resumed. The loader's state is
the next step plus the three numbers that must match on restore.
"""

import collections
import concurrent.futures
import functools
from collections.abc import Mapping

import numpy as np

from flaxft.data.examples import Examples
from flaxft.data.masking import mask_example
from flaxft.errors import InputError

# Appended to masking seeds so they never collide with the epoch-order seed [seed, epoch]
# (SeedSequence pads short seeds with zeros, so [seed, epoch, 0] would equal it).
_MASK_STREAM = 1


class PretrainLoader:
    """Iterator over local batches; `get_batch(step)` gives random access.

    Batch dict for the local batch b = G / P, row length L, M = max_predictions:
        input_ids [b, L] int32 (masked), attention_mask [b, L] int32 (1 on real tokens),
        token_type_ids [b, L] int32, segment_ids [b, L] int32,
        masked_positions [b, M] int32, masked_labels [b, M] int32,
        masked_weights [b, M] float32, next_sentence_label [b] int32.
    """

    def __init__(
        self,
        examples: Examples,
        global_batch_size: int,
        seed: int,
        *,
        vocab_size: int,
        special_ids: Mapping[str, int],
        mask_rate: float = 0.15,
        max_predictions: int | None = None,
        whole_word: bool = False,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        prefetch: int = 2,
    ):
        """
        Args:
            examples: the rows to serve (N >= 1).
            global_batch_size: G, rows per step over all hosts; divisible by process_count.
            seed: order and masks; the same seed gives the same batches.
            vocab_size: random replacement tokens are drawn below it.
            special_ids: "mask" and the other special ids (`special_token_ids(tokenizer)`);
                none of them is ever a random replacement.
            mask_rate: fraction of real non-special tokens to predict.
            max_predictions: M; default `max(1, round(mask_rate * L))`, which always fits.
            whole_word: mask whole words.
            process_index, process_count: this host, and the number of hosts.
            shuffle: reshuffle every epoch (evaluation sets pass False).
            prefetch: batches computed ahead on a background thread (0: none).
        """
        if len(examples) == 0:
            raise InputError("the loader got no examples (is the corpus or eval split empty?)")
        check_host_slicing(global_batch_size, seed, process_index, process_count)
        if not 0 < mask_rate <= 1:
            raise InputError(f"mask_rate must be in (0, 1], got {mask_rate}")
        if max_predictions is not None and max_predictions < 1:
            raise InputError(f"max_predictions must be >= 1, got {max_predictions}")
        self.examples = examples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.shuffle = shuffle
        self.max_predictions = max_predictions or max(1, round(mask_rate * examples.seq_len))
        self._masking = dict(
            mask_id=special_ids["mask"],
            vocab_size=vocab_size,
            special_ids=tuple(special_ids.values()),
            max_predictions=self.max_predictions,
            mask_rate=mask_rate,
            whole_word=whole_word,
        )
        self._prefetch = prefetch
        self._pending: collections.deque = collections.deque()
        self._executor = None
        self.step = 0

    def get_batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's batch for global step `step` (a pure function of `step`)."""
        first = step * self.global_batch_size + self.process_index * self.local_batch_size
        stream_positions = np.arange(first, first + self.local_batch_size)
        epochs, offsets = np.divmod(stream_positions, len(self.examples))
        indices = np.array(
            [self._epoch_order(e)[o] for e, o in zip(epochs.tolist(), offsets.tolist())]
        )
        masked = [
            mask_example(
                self.examples.input_ids[index],
                self.examples.special_mask[index],
                self.examples.word_starts[index],
                np.random.default_rng([self.seed, epoch, index, _MASK_STREAM]),
                **self._masking,
            )
            for epoch, index in zip(epochs.tolist(), indices.tolist())
        ]
        input_ids, positions, labels, weights = (np.stack(column) for column in zip(*masked))
        segment_ids = self.examples.segment_ids[indices]
        return {
            "input_ids": input_ids,
            "attention_mask": (segment_ids > 0).astype(np.int32),
            "token_type_ids": self.examples.token_type_ids[indices],
            "segment_ids": segment_ids,
            "masked_positions": positions,
            "masked_labels": labels,
            "masked_weights": weights,
            "next_sentence_label": self.examples.next_sentence_label[indices],
        }

    def __iter__(self) -> "PretrainLoader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """The batch for `self.step`, then advances it."""
        if self._prefetch == 0:
            batch = self.get_batch(self.step)
        else:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, "PretrainLoader")
            while len(self._pending) <= self._prefetch:
                next_step = self.step + len(self._pending)
                self._pending.append(self._executor.submit(self.get_batch, next_step))
            batch = self._pending.popleft().result()
        self.step += 1
        return batch

    def state(self) -> dict[str, int]:
        """The next step to serve, plus what `restore` checks (batches consumed so far)."""
        return {
            "step": self.step,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_examples": len(self.examples),
        }

    def restore(self, state: Mapping[str, int]) -> None:
        """Continues from `state` (from `state()`, possibly of a run with other hosts)."""
        for key, value in self.state().items():
            if key != "step" and state.get(key) != value:
                raise InputError(
                    f"data loader state has {key}={state.get(key)}, but this run has {value}"
                )
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self.step = int(state["step"])

    def close(self) -> None:
        """Stops the prefetch thread; the next `__next__` would start a new one."""
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None
        self._pending.clear()

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """[N] read-only order in which epoch `epoch` visits the examples."""
        return _epoch_order(self.seed, epoch, len(self.examples), self.shuffle)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_examples: int, shuffle: bool) -> np.ndarray:
    order = (
        np.random.default_rng([seed, epoch]).permutation(num_examples)
        if shuffle
        else np.arange(num_examples)
    )
    order.flags.writeable = False
    return order


def check_host_slicing(global_batch_size: int, seed: int, process_index: int, process_count: int) -> None:
    """InputError unless every one of `process_count` hosts can take an equal share of a
    global batch and `process_index` names one of them."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise InputError(
            f"global_batch_size {global_batch_size} must be a positive multiple of the "
            f"process count {process_count}"
        )
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if not 0 <= process_index < process_count:
        raise InputError(f"process_index {process_index} not in [0, {process_count})")
