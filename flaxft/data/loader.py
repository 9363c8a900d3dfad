"""Deterministic, checkpointable, per-host batches of fine-tuning rows (pretraining
batches: `flaxft.data.stream`, on the same prefetching base).

The global example stream is the concatenation of epochs; epoch e visits the N rows in
the order `np.random.default_rng([seed, e]).permutation(N)` (identity without shuffle).
Global batch s is stream positions [s*G, (s+1)*G) (a batch may span two epochs, so every
batch is full); host p of P takes the contiguous slice [p*G/P, (p+1)*G/P) of it. So
batches depend only on the step: never on the host count, on prefetching, or on whether
the run was resumed. A loader's state is the next step plus the numbers that must match
on restore.

- `FinetuneLoader`: fixed-size feature arrays (a fine-tuning split). Evaluation
  (`shuffle=False`) is one pass in row order instead, `num_batches = ceil(N / G)`, the
  last batch filled up with copies of row 0 (real inputs, so the model's outputs on them
  are finite) whose `weights` are 0; `concat_outputs` drops them again.
- `PackedFinetuneLoader`: the same training batches (the same G examples per step), each
  packed by the task into as few rows as its examples fit, then filled up to one row
  count for the whole run (the most any of its steps needs, on any host): one compiled
  shape, and no work on padding positions beyond the filler rows.
"""

import collections
import concurrent.futures
import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from flaxft.errors import InputError


class Prefetching:
    """Iteration over `get_batch(step)` (a subclass's pure function of the step) from
    `self.step` on, with `prefetch` batches computed ahead on a background thread."""

    def __init__(self, prefetch: int):
        self.step = 0
        self._prefetch = prefetch
        self._pending: collections.deque = collections.deque()
        self._executor = None

    def get_batch(self, step: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __iter__(self) -> "Prefetching":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """The batch for `self.step`, then advances it."""
        if self._prefetch == 0:
            batch = self.get_batch(self.step)
        else:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, type(self).__name__)
            while len(self._pending) <= self._prefetch:
                next_step = self.step + len(self._pending)
                self._pending.append(self._executor.submit(self.get_batch, next_step))
            batch = self._pending.popleft().result()
        self.step += 1
        return batch

    def seek(self, step: int) -> None:
        """Serves `step` next (prefetched batches are dropped)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self.step = step

    def close(self) -> None:
        """Stops the prefetch thread; the next `__next__` would start a new one."""
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None
        self._pending.clear()


class StepLoader(Prefetching):
    """Host slicing and epoch order over N rows, and the state a checkpoint keeps.
    Subclasses make `get_batch(step)`, this host's batch for global step `step`."""

    def __init__(
        self,
        num_examples: int,
        global_batch_size: int,
        seed: int,
        *,
        shuffle: bool,
        process_index: int,
        process_count: int,
        prefetch: int,
    ):
        """
        Args:
            num_examples: N >= 1 rows in the stream's epochs.
            global_batch_size: G, rows per step over all hosts; divisible by process_count.
            seed: the order (and whatever else the subclass draws).
            shuffle: reshuffle every epoch; False visits rows in order.
            process_index, process_count: this host, and the number of hosts.
            prefetch: batches computed ahead on a background thread (0: none).
        """
        check_host_slicing(global_batch_size, seed, process_index, process_count)
        super().__init__(prefetch)
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.seed = seed
        self.shuffle = shuffle

    def positions(self, step: int, process_index: int | None = None) -> np.ndarray:
        """[b] positions in the global stream of this host's (or host `process_index`'s)
        rows of step `step`."""
        host = self.process_index if process_index is None else process_index
        first = step * self.global_batch_size + host * self.local_batch_size
        return np.arange(first, first + self.local_batch_size)

    def stream_rows(self, step: int, process_index: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(epochs [b], rows [b]): which epoch and example row each of this host's (or host
        `process_index`'s) rows of step `step` comes from."""
        epochs, offsets = np.divmod(self.positions(step, process_index), self.num_examples)
        rows = np.empty_like(offsets)
        for epoch in np.unique(epochs).tolist():
            here = epochs == epoch
            rows[here] = _epoch_order(self.seed, epoch, self.num_examples, self.shuffle)[offsets[here]]
        return epochs, rows

    def state(self) -> dict[str, int]:
        """The next step to serve, plus what `restore` checks (batches consumed so far)."""
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
        self.seek(int(state["step"]))


class FinetuneLoader(StepLoader):
    """Batches of fixed-size feature arrays: every array sliced to this host's b = G / P
    rows, plus `weights` [b] float32 (1 on real rows)."""

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        global_batch_size: int,
        seed: int = 0,
        *,
        shuffle: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 0,
    ):
        """
        Args:
            arrays: batch fields, each [N, ...] with the same N >= 1 (`Features.arrays`).
            shuffle: True for training (endless, reshuffled every epoch); False for one
                ordered, padded evaluation pass.
            The rest: see `StepLoader`.
        """
        sizes = {key: len(value) for key, value in arrays.items()}
        if not sizes or set(sizes.values()) == {0}:
            raise InputError("the fine-tuning loader got no examples (is the split empty?)")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"feature arrays differ in length: {sizes}")
        if "weights" in arrays:
            raise ValueError("'weights' is added by the loader; features must not hold it")
        super().__init__(
            next(iter(sizes.values())), global_batch_size, seed, shuffle=shuffle, process_index=process_index,
            process_count=process_count, prefetch=prefetch,
        )
        self.arrays = dict(arrays)

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
        if self.shuffle:
            _, rows = self.stream_rows(step)
            weights = np.ones(len(rows), np.float32)
        else:
            if not 0 <= step < self.num_batches:
                raise IndexError(f"evaluation batch {step} of {self.num_batches}")
            positions = self.positions(step)
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


class PackedFinetuneLoader(FinetuneLoader):
    """Training batches of `FinetuneLoader` (the same b examples of every step), packed:
    `pack` lays a batch's examples into R <= b rows, and the batch is filled up to `rows`
    rows with copies of its first row whose `weights` are 0.

    rows: the most rows any of the first `num_steps` steps needs on any host, rounded up
    to a multiple of `row_multiple` (what the batch axis divides into: devices,
    microbatches). Every step of the run has this one shape, known before the first.
    Batch dict: the fields `pack` returns, each [rows, ...], plus `weights` [rows]
    float32 (1 on packed rows).
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        global_batch_size: int,
        seed: int = 0,
        *,
        pack: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
        num_steps: int,
        row_multiple: int = 1,
        process_index: int = 0,
        process_count: int = 1,
    ):
        """
        Args:
            pack: unpacked rows of a batch ({field: [b, ...]}, without weights) -> packed
                rows ({field: [R, ...]}, R <= b), a pure function (the task's).
            num_steps: steps the run takes: `rows` fits each of them.
            row_multiple: `rows` is a multiple of it.
            The rest: see `FinetuneLoader` (always shuffled, no prefetching).
        """
        super().__init__(arrays, global_batch_size, seed, shuffle=True, process_index=process_index,
                         process_count=process_count)
        self.pack = pack
        needed = max(
            (self._packed(step, host)[1] for step in range(num_steps) for host in range(process_count)), default=1
        )
        self.rows = math.ceil(needed / row_multiple) * row_multiple

    def _packed(self, step: int, process_index: int | None = None) -> tuple[dict[str, np.ndarray], int]:
        """(packed fields, their row count) of a host's examples of step `step`."""
        _, rows = self.stream_rows(step, process_index)
        packed = self.pack({key: value[rows] for key, value in self.arrays.items()})
        return packed, len(next(iter(packed.values())))

    def get_batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's packed batch for global step `step` (a pure function of `step`).

        Raises ValueError when the step needs more than `rows` rows (a step past num_steps)."""
        packed, count = self._packed(step)
        if count > self.rows:
            raise ValueError(f"step {step} packs into {count} rows, more than the {self.rows} planned")
        fill = np.concatenate([np.arange(count), np.zeros(self.rows - count, np.int64)])
        batch = {key: value[fill] for key, value in packed.items()}
        batch["weights"] = (np.arange(self.rows) < count).astype(np.float32)
        return batch


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
