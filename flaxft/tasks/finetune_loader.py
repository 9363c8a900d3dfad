"""Deterministic, checkpointable, per-host batches over fixed-size feature arrays.

Training (`shuffle=True`): the example stream is the concatenation of epochs; epoch e
visits the N rows in the order `np.random.default_rng([seed, e]).permutation(N)`.
Global batch s is stream positions [s*G, (s+1)*G) (a batch may span two epochs, so
every batch is full); host p of P takes the contiguous slice [p*G/P, (p+1)*G/P).
Batches depend only on the step, never on the host count or on resuming. The state is
the next step plus the numbers `restore` checks, as `flaxft.data.PretrainLoader`'s.

Evaluation (`shuffle=False`): one pass in row order, `num_batches = ceil(N / G)`; the last
batch is filled up with copies of row 0 (real inputs, so the model's outputs on them are
finite) whose `weights` are 0. Every batch, training or evaluation, carries
`weights` [b] float32: 1 on real rows.
"""

import functools
from collections.abc import Mapping, Sequence

import numpy as np

from flaxft.data.loader import check_host_slicing
from flaxft.errors import InputError


class FinetuneLoader:
    """Iterator over this host's batches; `get_batch(step)` gives random access.

    Batch: every array of `arrays` sliced to this host's b = G / P rows, plus `weights`.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        global_batch_size: int,
        seed: int = 0,
        *,
        shuffle: bool = True,
        process_index: int = 0,
        process_count: int = 1,
    ):
        """
        Args:
            arrays: batch fields, each [N, ...] with the same N >= 1 (`Features.arrays`).
            global_batch_size: G, rows per step over all hosts; divisible by process_count.
            seed: the training order (unused without shuffle).
            shuffle: True for training (endless, reshuffled every epoch); False for one
                ordered, padded evaluation pass.
            process_index, process_count: this host, and the number of hosts.
        """
        sizes = {key: len(value) for key, value in arrays.items()}
        if not sizes or set(sizes.values()) == {0}:
            raise InputError("the fine-tuning loader got no examples (is the split empty?)")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"feature arrays differ in length: {sizes}")
        if "weights" in arrays:
            raise ValueError("'weights' is added by the loader; features must not hold it")
        check_host_slicing(global_batch_size, seed, process_index, process_count)
        self.arrays = dict(arrays)
        self.num_examples = next(iter(sizes.values()))
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.seed = seed
        self.shuffle = shuffle
        self.step = 0

    @property
    def num_batches(self) -> int:
        """Batches in one evaluation pass, ceil(N / G) (training: batches per epoch, rounded up)."""
        return -(-self.num_examples // self.global_batch_size)

    def epoch(self, step: int | None = None) -> float:
        """Epochs completed (fractional) before global step `step` (default: the next one)."""
        step = self.step if step is None else step
        return step * self.global_batch_size / self.num_examples

    def get_batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's batch for global step `step` (a pure function of `step`)."""
        first = step * self.global_batch_size + self.process_index * self.local_batch_size
        positions = np.arange(first, first + self.local_batch_size)
        if self.shuffle:
            epochs, offsets = np.divmod(positions, self.num_examples)
            rows = np.empty_like(positions)
            for epoch in np.unique(epochs).tolist():
                here = epochs == epoch
                rows[here] = _epoch_order(self.seed, epoch, self.num_examples)[offsets[here]]
            weights = np.ones(len(rows), np.float32)
        else:
            if not 0 <= step < self.num_batches:
                raise IndexError(f"evaluation batch {step} of {self.num_batches}")
            real = positions < self.num_examples
            rows = np.where(real, positions, 0)
            weights = real.astype(np.float32)
        batch = {key: value[rows] for key, value in self.arrays.items()}
        batch["weights"] = weights
        return batch

    def __iter__(self):
        """Training: this loader, endless. Evaluation: a fresh pass over its batches."""
        if self.shuffle:
            return self
        return (self.get_batch(i) for i in range(self.num_batches))

    def __next__(self) -> dict[str, np.ndarray]:
        """The batch for `self.step`, then advances it (training)."""
        batch = self.get_batch(self.step)
        self.step += 1
        return batch

    def state(self) -> dict[str, int]:
        """The next step to serve, plus what `restore` checks."""
        return {
            "step": self.step,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
            "num_examples": self.num_examples,
        }

    def restore(self, state: Mapping[str, int]) -> None:
        """Continues from `state` (from `state()`, possibly of a run with other hosts)."""
        for key, value in self.state().items():
            if key != "step" and state.get(key) != value:
                raise InputError(
                    f"data loader state has {key}={state.get(key)}, but this run has {value}"
                )
        self.step = int(state["step"])

    def close(self) -> None:
        """Nothing to stop (no background thread); here for symmetry with PretrainLoader."""


def concat_outputs(
    chunks: Sequence[Mapping[str, np.ndarray]], num_examples: int
) -> dict[str, np.ndarray]:
    """Concatenates the GLOBAL per-batch outputs of an evaluation pass (every host's rows,
    in batch order, e.g. after `multihost_utils.process_allgather`) and drops the
    padding rows: [num_examples, ...] per key."""
    if not chunks:
        raise ValueError("no evaluation outputs")
    out = {key: np.concatenate([np.asarray(c[key]) for c in chunks]) for key in chunks[0]}
    for key, value in out.items():
        if len(value) < num_examples:
            raise ValueError(f"outputs {key!r} have {len(value)} rows, fewer than {num_examples}")
    return {key: value[:num_examples] for key, value in out.items()}


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    order.flags.writeable = False
    return order
