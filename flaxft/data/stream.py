"""Pretraining batches from streams of chunks: deterministic, per process, resumable from
a small position, masked dynamically.

S streams (over all processes) each give g = G / S rows to every global batch: global
batch s is stream 0's rows s*g ... (s+1)*g - 1, then stream 1's, and so on. Process p of
P serves streams p*S/P ... (p+1)*S/P - 1 (its local batch) and reads only their chunks.
So the global batches depend on S, never on P: a run on one process with S streams makes
the batches a run on S processes makes.

A stream's rows, epoch after epoch: in epoch e its n chunks are visited in the order
`default_rng([seed, e, 0, 2, k]).permutation(n)` and grouped into blocks of `mix_chunks`
consecutive chunks; a block's rows (those of its chunks, concatenated) are visited in the
order `default_rng([seed, e, 0, 0, b, k]).permutation(rows)`. A row's mask is drawn from
`default_rng([seed, e, row, 1, chunk, k])` alone. Without shuffling (evaluation), rows
are visited in order, and chunks either in order or in the order a shuffled loader with
a given seed visits them in its first epoch. Trailing zeros after the fourth number are
left out (`_seed`), so one stream of one chunk is visited as the rows of one array always
were: `default_rng([seed, e])` and `[seed, e, row, 1]`.

A loader's state is the step plus, per stream, (epoch, block, offset in the block):
restoring it continues there without reading the rows of any block before it (chunks
missing from the cache are prepared again as their turn comes).
"""

import bisect
import dataclasses
import functools
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from flaxft.data.examples import Examples
from flaxft.data.loader import Prefetching, check_host_slicing
from flaxft.data.masking import mask_example
from flaxft.errors import InputError

_ORDER_KEY, _MASK_KEY, _CHUNK_ORDER_KEY = 0, 1, 2


class RowSource(Protocol):
    """Rows of S streams, each a list of chunks of rows."""

    num_streams: int
    identity: str  # changes with the corpus, its chunks or how rows are made: checked on restore

    def num_chunks(self, stream: int) -> int: ...

    def num_rows(self, stream: int, index: int) -> int:
        """Rows of chunk `index` of `stream` (waits for it to be prepared)."""

    def rows(self, stream: int, index: int, rows: np.ndarray) -> Examples:
        """Those rows ([b] int) of the chunk, as `Examples` [b, L]."""

    def want(self, chunks: list[tuple[int, int]]) -> None:
        """Hint: these (stream, index) chunks are needed next, in this order."""

    def close(self) -> None:
        """Stops background work (rows stay readable)."""


class InMemory:
    """A `RowSource` held in memory: `chunks[k][i]` is chunk i of stream k."""

    identity = "in-memory"

    def __init__(self, chunks: Sequence[Sequence[Examples]]):
        self.chunks = [list(stream) for stream in chunks]
        self.num_streams = len(self.chunks)

    def num_chunks(self, stream: int) -> int:
        return len(self.chunks[stream])

    def num_rows(self, stream: int, index: int) -> int:
        return len(self.chunks[stream][index])

    def rows(self, stream: int, index: int, rows: np.ndarray) -> Examples:
        examples = self.chunks[stream][index]
        return Examples(**{f.name: getattr(examples, f.name)[rows] for f in dataclasses.fields(Examples)})

    def want(self, chunks: list[tuple[int, int]]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class _Block:
    chunks: np.ndarray  # [c] chunk indices, in visiting order
    offsets: np.ndarray  # [c + 1] row offsets of the chunks in the block
    order: np.ndarray  # [rows] block rows in visiting order

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])


class PretrainLoader(Prefetching):
    """Masked pretraining batches of this process's streams.

    Batch dict for the local batch b = G / P, row length L, M = max_predictions:
        input_ids [b, L] int32 (masked), attention_mask [b, L] int32 (1 on real tokens),
        token_type_ids [b, L] int32, segment_ids [b, L] int32,
        masked_positions [b, M] int32, masked_labels [b, M] int32,
        masked_weights [b, M] float32, next_sentence_label [b] int32.
    """

    def __init__(
        self,
        source: RowSource | Examples,
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
        mix_chunks: int = 4,
        chunk_order_seed: int | None = None,
        prefetch: int = 2,
    ):
        """
        Args:
            source: the rows (`Examples` for one stream of one chunk in memory).
            global_batch_size: G, a multiple of the stream count S.
            seed: the order and the masks.
            vocab_size: random replacement tokens are drawn below it.
            special_ids: the ids by role, "mask" and the others
                (`special_token_ids(tokenizer)`); none of them is ever a random replacement.
            mask_rate: fraction of real non-special tokens to predict.
            max_predictions: M; default `max(1, round(mask_rate * L))`, which always fits.
            whole_word: mask whole words.
            process_index, process_count: this process, and how many there are (S must
                be a multiple of it).
            shuffle: training order (above); False visits chunks and rows in order.
            mix_chunks: chunks per block, whose rows are shuffled together.
            chunk_order_seed: without shuffling, visit each stream's chunks in the order
                a loader shuffled with this seed visits them in its first epoch (for
                evaluation: the chunks training needs, and so prepares, first); None:
                in order.
            prefetch: batches made ahead on a background thread.
        """
        source = InMemory([[source]]) if isinstance(source, Examples) else source
        streams = source.num_streams
        check_host_slicing(global_batch_size, seed, process_index, process_count)
        if streams % process_count:
            raise InputError(f"config.data.streams ({streams}) must be a multiple of the process count "
                             f"({process_count})")
        if global_batch_size % streams:
            raise InputError(f"global_batch_size {global_batch_size} must be a multiple of the number of data "
                             f"streams ({streams}, config.data.streams)")
        if not 0 < mask_rate <= 1:
            raise InputError(f"mask_rate must be in (0, 1], got {mask_rate}")
        if max_predictions is not None and max_predictions < 1:
            raise InputError(f"max_predictions must be >= 1, got {max_predictions}")
        if mix_chunks < 1:
            raise InputError(f"config.data.mix_chunks must be >= 1, got {mix_chunks}")
        super().__init__(prefetch)
        self.source = source
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.chunk_order_seed = chunk_order_seed
        self.mix_chunks = mix_chunks if shuffle else 1
        self.rows_per_stream = global_batch_size // streams
        per_process = streams // process_count
        self.streams = range(process_index * per_process, (process_index + 1) * per_process)
        self._vocab_size, self._special_ids, self._mask_rate = vocab_size, special_ids, mask_rate
        self._max_predictions, self._whole_word = max_predictions, whole_word
        # Per stream: the first position of each block met so far (ascending), and its (epoch, block).
        self._starts = {k: ([0], [(0, 0)]) for k in self.streams}
        self._lock = threading.Lock()
        self._block = functools.lru_cache(maxsize=16)(self._make_block)
        if shuffle:
            self._want_rest_of_epoch()

    def max_predictions_for(self, seq_len: int) -> int:
        """M for rows of length `seq_len` (the one given, else from the mask rate)."""
        return self._max_predictions or max(1, round(self._mask_rate * seq_len))

    def get_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's batch for global step `step` (a pure function of `step`)."""
        parts = [self._stream_rows(k, step) for k in self.streams]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def locate(self, stream: int, position: int) -> tuple[int, int, int]:
        """(epoch, block, offset) of row `position` of `stream` (counted from the start),
        walking forward from the last known block start at or before it."""
        firsts, blocks = self._starts[stream]
        with self._lock:
            index = bisect.bisect_right(firsts, position) - 1
            if index < 0:
                raise ValueError(f"stream {stream} position {position} is before the restored one ({firsts[0]})")
            first, (epoch, block) = firsts[index], blocks[index]
        blocks_per_epoch = -(-self.source.num_chunks(stream) // self.mix_chunks)
        empty_blocks = 0
        while position >= first + (size := self._block(stream, epoch, block).num_rows):
            first += size
            empty_blocks = empty_blocks + 1 if size == 0 else 0
            if empty_blocks >= 2 * blocks_per_epoch - 1:  # then a whole epoch was empty
                split = "training" if self.shuffle else "held-out"
                raise InputError(f"data stream {stream} has no {split} rows: its documents are too few "
                                 f"or too short (see config.data.eval_fraction, config.data.streams)")
            block += 1
            if block == blocks_per_epoch:
                epoch, block = epoch + 1, 0
            index += 1
            with self._lock:
                if index == len(firsts):
                    firsts.append(first)
                    blocks.append((epoch, block))
        return epoch, block, position - first

    def state(self) -> dict:
        """The next step to serve; per stream of this process, its (epoch, block, offset)
        there; and what `restore` checks."""
        position = self.step * self.rows_per_stream
        return {"step": self.step, **self._settings(),
                "positions": {str(k): list(self.locate(k, position)) for k in self.streams}}

    def _settings(self) -> dict:
        """What a state must match to be restored here."""
        return {"seed": self.seed, "global_batch_size": self.global_batch_size, "streams": self.source.num_streams,
                "mix_chunks": self.mix_chunks, "corpus": self.source.identity}

    def restore(self, state: Mapping) -> None:
        """Continues from `state` (from `state()` of a run with the same streams, on any
        number of processes; its "positions" must cover this process's streams)."""
        if "positions" not in state:  # written before streams: one stream over one array of rows
            if not self._one_chunk:
                raise InputError("the checkpoint's data position is from a flaxft without data streams; it resumes "
                                 "only on a corpus of one chunk and config.data.streams=1")
            expected = {"seed": self.seed, "global_batch_size": self.global_batch_size,
                        "num_examples": self.source.num_rows(0, 0)}
        else:
            expected = self._settings()
        for key, value in expected.items():
            if state.get(key) != value:
                why = " (the corpus files, their chunking or the row settings changed)" if key == "corpus" else ""
                raise InputError(f"data loader state has {key}={state.get(key)!r}, but this run has {value!r}{why}")
        step = int(state["step"])
        position = step * self.rows_per_stream
        if "positions" in state:
            missing = [k for k in self.streams if str(k) not in state["positions"]]
            if missing:
                raise InputError(f"data loader state has no position for data stream {missing[0]}")
            for k in self.streams:
                epoch, block, offset = state["positions"][str(k)]
                self._starts[k] = ([position - offset], [(epoch, block)])
        if self.shuffle:
            self._want_rest_of_epoch()
        self.seek(step)

    def _want_rest_of_epoch(self) -> None:
        """Tells the source which chunks come next: the rest of each stream's epoch from
        its anchor on, the streams' chunks interleaved."""
        orders = []
        for k in self.streams:
            epoch, block = self._starts[k][1][0]
            order = self._chunk_order(k, epoch)
            orders.append([(k, c) for c in order[block * self.mix_chunks:].tolist()])
        self.source.want([pair for group in zip(*orders) for pair in group] +
                         [pair for order in orders for pair in order[min(map(len, orders)):]])

    def close(self) -> None:
        """Stops prefetching and the source's background work."""
        super().close()
        self.source.close()

    @property
    def _one_chunk(self) -> bool:
        return self.source.num_streams == 1 and self.source.num_chunks(0) == 1

    def _stream_rows(self, stream: int, step: int) -> dict[str, np.ndarray]:
        """Stream `stream`'s g masked rows of step `step`."""
        position, wanted = step * self.rows_per_stream, self.rows_per_stream
        epochs, chunks, rows = [], [], []
        while wanted:
            epoch, block_index, offset = self.locate(stream, position)
            block = self._block(stream, epoch, block_index)
            taken = block.order[offset:offset + wanted]
            place = np.searchsorted(block.offsets, taken, side="right") - 1
            epochs.append(np.full(len(taken), epoch))
            chunks.append(block.chunks[place])
            rows.append(taken - block.offsets[place])
            position, wanted = position + len(taken), wanted - len(taken)
        epochs, chunks, rows = (np.concatenate(x) for x in (epochs, chunks, rows))
        examples = self._gather(stream, chunks, rows)
        masked = [
            mask_example(
                examples.input_ids[i], examples.special_mask[i], examples.word_starts[i],
                np.random.default_rng(_seed([self.seed, epoch, row, _MASK_KEY], chunk, stream)),
                mask_id=self._special_ids["mask"], vocab_size=self._vocab_size,
                special_ids=tuple(self._special_ids.values()), max_predictions=self.max_predictions_for(examples.seq_len),
                mask_rate=self._mask_rate, whole_word=self._whole_word,
            )
            for i, (epoch, chunk, row) in enumerate(zip(epochs.tolist(), chunks.tolist(), rows.tolist()))
        ]
        input_ids, positions, labels, weights = (np.stack(column) for column in zip(*masked))
        return {
            "input_ids": input_ids,
            "attention_mask": (examples.segment_ids > 0).astype(np.int32),
            "token_type_ids": examples.token_type_ids,
            "segment_ids": examples.segment_ids,
            "masked_positions": positions,
            "masked_labels": labels,
            "masked_weights": weights,
            "next_sentence_label": examples.next_sentence_label,
        }

    def _gather(self, stream: int, chunks: np.ndarray, rows: np.ndarray) -> Examples:
        """The rows (chunk `chunks[i]`, row `rows[i]`) of `stream` as one `Examples`, in order."""
        pieces, where = [], []
        for chunk in np.unique(chunks).tolist():
            here = np.flatnonzero(chunks == chunk)
            pieces.append(self.source.rows(stream, chunk, rows[here]))
            where.append(here)
        order = np.argsort(np.concatenate(where), kind="stable")
        return Examples(**{f.name: np.concatenate([getattr(p, f.name) for p in pieces])[order]
                           for f in dataclasses.fields(Examples)})

    def _chunk_order(self, stream: int, epoch: int) -> np.ndarray:
        """[n]: the order `stream`'s chunks are visited in, in `epoch`."""
        num_chunks = self.source.num_chunks(stream)
        if self.shuffle:
            return _permutation(self.seed, epoch, stream, num_chunks)
        if self.chunk_order_seed is None:
            return np.arange(num_chunks)
        return _permutation(self.chunk_order_seed, 0, stream, num_chunks)

    def _make_block(self, stream: int, epoch: int, block: int) -> _Block:
        chunks = self._chunk_order(stream, epoch)[block * self.mix_chunks:(block + 1) * self.mix_chunks]
        self.source.want([(stream, c) for c in chunks.tolist()])
        sizes = np.array([self.source.num_rows(stream, c) for c in chunks.tolist()], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        total = int(offsets[-1])
        order = (np.random.default_rng(_seed([self.seed, epoch, 0, _ORDER_KEY], block, stream)).permutation(total)
                 if self.shuffle else np.arange(total))
        return _Block(chunks, offsets, order)


@functools.lru_cache(maxsize=8)
def _permutation(seed: int, epoch: int, stream: int, num_chunks: int) -> np.ndarray:
    return np.random.default_rng(_seed([seed, epoch, 0, _CHUNK_ORDER_KEY], stream)).permutation(num_chunks)


def _seed(key: list[int], *where: int) -> list[int]:
    """`key` (four numbers) followed by `where` unless all of it is 0: so the first chunk
    of stream 0 draws from `key` alone (SeedSequence pads short seeds with zeros to four
    words: [seed, e, 0, 0] is [seed, e])."""
    return key + list(where) if any(where) else key
