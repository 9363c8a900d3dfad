"""Chunks -> tokens -> row layouts, cached on disk per chunk, prepared by worker processes.

Each chunk (`flaxft.data.shards`) is prepared on its own: read, split into training and
held-out documents (`split_documents` within the chunk), tokenized, and laid out into
rows (`lay_out_rows`). Both results are cached as `.npy` files, memory-mapped when read:

    CACHE/tokens-KEY/{train,eval}/token_ids.npy ...   the chunk's tokens, by split
    CACHE/rows-KEY/{train,eval}/row_offsets.npy ...   its rows' layout, and info.json

The tokens' key is the chunk's identity, the tokenizer and `eval_fraction`; the rows'
key adds the format, seq_len, seed, short_seq_prob and the chunk's place in its stream
(its randomness). So a new seq_len or seed reuses the tokens; a second run, another host
sharing the folder, or a resumed run finds every prepared chunk and reads no text. An
entry appears whole or not at all (written to a temporary folder, then renamed).

`Preparation` runs the chunks of this process's streams on a pool of worker processes
(spawned, one per core by default, at a lower scheduling priority than training), most
needed first: training starts as soon as its first chunks are ready, and the rest are
prepared while it runs. Memory stays bounded by the chunk size times the workers, never
the corpus size. Process 0 prints the progress: chunks, MB, MB/s and the time left.
"""

import concurrent.futures
import concurrent.futures.process
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from flaxft.data.examples import Examples, Layout, fill_rows, lay_out_rows, split_documents
from flaxft.data.shards import Chunk, read_chunk
from flaxft.data.tokenize import TokenizedCorpus, tokenize_documents
from flaxft.errors import InputError

# Part of every key: bump when the meaning or layout of cached arrays changes.
CACHE_FORMAT_VERSION = 3
SPLITS = ("train", "eval")  # in the order split_documents returns them
_PROGRESS_EVERY_S = 10.0


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything but the chunk that its cached arrays depend on."""

    tokenizer_json: str
    seq_len: int
    format: str
    seed: int
    short_seq_prob: float
    eval_fraction: float

    @functools.cached_property
    def tokenizer_fingerprint(self) -> str:
        return hashlib.sha256(self.tokenizer_json.encode()).hexdigest()

    def tokens_key(self, chunk: Chunk) -> str:
        return _key("tokens", chunk.identity, self.tokenizer_fingerprint, self.eval_fraction)

    def rows_key(self, chunk: Chunk, stream: int, index: int) -> str:
        return _key("rows", self.tokens_key(chunk), self.format, self.seq_len, self.seed, self.short_seq_prob,
                    stream, index)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared chunk: where its arrays are, and their sizes."""

    tokens_dir: Path
    rows_dir: Path
    rows: Mapping[str, int]  # by split
    from_cache: bool

    def open(self, split: str) -> tuple[TokenizedCorpus, Layout]:
        """The split's tokens and layout, memory-mapped."""
        return (_load(TokenizedCorpus, self.tokens_dir / split), _load(Layout, self.rows_dir / split))


def prepare_chunk(chunk: Chunk, recipe: Recipe, cache_dir: Path, stream: int, index: int) -> Prepared:
    """Prepares `chunk` (the `index`-th of stream `stream`) into `cache_dir` unless it is
    there already.

    Its "bert" rows draw from `np.random.default_rng([seed, index, 0, 3, stream])`, but
    the first chunk of stream 0's from `default_rng(seed)`: a corpus of one chunk gets the
    rows `make_examples` makes of it.

    Raises:
        InputError: the chunk's file cannot be read, or its documents cannot make rows.
    """
    cached = cached_chunk(chunk, recipe, cache_dir, stream, index)
    if cached is not None:
        return cached
    tokens_dir, rows_dir = _entries(chunk, recipe, cache_dir, stream, index)
    if tokens_dir.is_dir():
        by_split = {split: _load(TokenizedCorpus, tokens_dir / split) for split in SPLITS}
    else:
        documents = read_chunk(chunk)
        tokens = tokenize_documents(documents, _tokenizer(recipe.tokenizer_json))
        parts = split_documents(tokens.num_documents, recipe.eval_fraction) if tokens.num_documents > 1 else (
            np.arange(tokens.num_documents), np.arange(0))
        by_split = {split: tokens.select(part) for split, part in zip(SPLITS, parts)}
        _write_entry(tokens_dir, {split: dataclasses.asdict(by_split[split]) for split in SPLITS})
    rows = {}
    layouts = {}
    for split, tokens in by_split.items():
        rng = np.random.default_rng([recipe.seed, index, 0, 3, stream] if index or stream else recipe.seed)
        if tokens.num_documents < (2 if recipe.format == "bert" else 1):
            layouts[split] = _empty_layout()
        else:
            try:
                layouts[split] = lay_out_rows(tokens, recipe.seq_len, recipe.format, rng, recipe.short_seq_prob)
            except InputError as e:
                raise InputError(f"corpus {chunk.name}: {e}") from None
        rows[split] = layouts[split].num_rows
    train = by_split["train"]
    info = {"rows": rows, "documents": train.num_documents + by_split["eval"].num_documents,
            "tokens": int(train.sentence_offsets[-1] + by_split["eval"].sentence_offsets[-1]),
            "chunk": chunk.name}
    _write_entry(rows_dir, {split: dataclasses.asdict(layout) for split, layout in layouts.items()}, info)
    return Prepared(tokens_dir, rows_dir, rows, from_cache=False)


def cached_chunk(chunk: Chunk, recipe: Recipe, cache_dir: Path, stream: int, index: int) -> Prepared | None:
    """The chunk as prepared in `cache_dir` before, or None."""
    tokens_dir, rows_dir = _entries(chunk, recipe, cache_dir, stream, index)
    info = _read_info(rows_dir)
    if info is None or not tokens_dir.is_dir():
        return None
    return Prepared(tokens_dir, rows_dir, info["rows"], from_cache=True)


def _entries(chunk: Chunk, recipe: Recipe, cache_dir: Path, stream: int, index: int) -> tuple[Path, Path]:
    """The chunk's tokens and rows folders."""
    return (cache_dir / f"tokens-{recipe.tokens_key(chunk)}",
            cache_dir / f"rows-{recipe.rows_key(chunk, stream, index)}")


class Preparation:
    """Chunks prepared in the background, most needed first.

    `jobs` are (stream, index, chunk); `order` lists them by when they are needed.
    `wait(stream, index)` returns the chunk's `Prepared`, moving it to the front if it
    has not started, and re-raises any worker's error (an `InputError` naming the file).
    """

    def __init__(self, jobs: Sequence[tuple[int, int, Chunk]], recipe: Recipe, cache_dir: str | os.PathLike,
                 workers: int, show_progress: bool):
        """
        Args:
            jobs: every chunk this process needs, as (stream, index, chunk).
            recipe: how each becomes rows.
            cache_dir: where entries are read and written (created).
            workers: worker processes; 0 prepares each chunk on the calling thread when
                it is first waited for.
            show_progress: print progress lines (process 0).
        """
        self.recipe = recipe
        self.cache_dir = Path(cache_dir).expanduser()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_entries(self.cache_dir)
        self._chunks = {(stream, index): chunk for stream, index, chunk in jobs}
        self._done: dict[tuple[int, int], Prepared] = {}
        self._running: set[tuple[int, int]] = set()
        self._error: BaseException | None = None
        self._lock = threading.Condition()
        self._pool = None
        self._closed = False
        self._progress = _Progress(sum(c.num_bytes for c in self._chunks.values()), len(self._chunks),
                                   show_progress)
        for key, chunk in self._chunks.items():  # what an earlier run (or host) prepared: nothing to read
            cached = cached_chunk(chunk, recipe, self.cache_dir, *key)
            if cached is not None:
                self._finish(key, cached)
        self._queue = dict.fromkeys(key for key in self._chunks if key not in self._done)  # an ordered set
        cores = len(os.sched_getaffinity(0)) if workers == -1 else workers
        self._workers = min(cores, len(self._queue)) if len(self._queue) > 1 else 0

    def wait(self, stream: int, index: int) -> Prepared:
        """The prepared chunk `index` of stream `stream`, once it is ready (prepared on
        this thread without workers, or after `close`)."""
        key = (stream, index)
        with self._lock:
            self.want([key])
            while True:
                if self._error is not None:
                    raise self._error
                if key in self._done:
                    return self._done[key]
                if (self._workers == 0 or self._closed) and key not in self._running:
                    self._finish(key, prepare_chunk(self._chunks[key], self.recipe, self.cache_dir, *key))
                else:
                    self._lock.wait()

    @property
    def chunks_from_cache(self) -> int:
        """Chunks found prepared in the cache (by an earlier run or another host)."""
        return self._progress.cached

    def want(self, keys: Sequence[tuple[int, int]]) -> None:
        """Moves the chunks `keys` ((stream, index)) that have not started to the front of
        the queue, in that order."""
        with self._lock:
            front = dict.fromkeys(key for key in keys if key in self._queue)
            self._queue = {**front, **{key: None for key in self._queue if key not in front}}
            self._start_more()

    def close(self) -> None:
        """Stops the workers at once (a chunk being written is left unwritten; `wait`
        prepares what is still needed on the calling thread)."""
        with self._lock:
            self._closed = True
            self._queue.clear()
            self._running.clear()
            pool, self._pool = self._pool, None
            self._lock.notify_all()
        if pool is not None:
            _stop(pool)

    def _start_more(self) -> None:
        """Submits queued chunks while fewer than `workers` run (the lock is held)."""
        if self._error is not None or self._closed or self._workers == 0:
            return
        if self._pool is None and self._queue:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self._workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_started)
        while self._queue and len(self._running) < self._workers:
            key = next(iter(self._queue))
            del self._queue[key]
            self._running.add(key)
            future = self._pool.submit(prepare_chunk, self._chunks[key], self.recipe, self.cache_dir, *key)
            future.add_done_callback(functools.partial(self._finished, key))

    def _finished(self, key: tuple[int, int], future: concurrent.futures.Future) -> None:
        with self._lock:
            if key in self._running and not future.cancelled():
                self._running.discard(key)
                error = future.exception()
                if error is None:
                    self._finish(key, future.result())
                    self._start_more()
                elif isinstance(error, InputError):
                    self._error = error
                else:
                    died = isinstance(error, concurrent.futures.process.BrokenProcessPool)
                    self._error = RuntimeError(
                        f"preparing corpus chunk {self._chunks[key].name} failed: "
                        + ("a worker process died (out of memory?)" if died else f"{type(error).__name__}: {error}"))
                    self._error.__cause__ = error
            self._lock.notify_all()

    def _finish(self, key: tuple[int, int], prepared: Prepared) -> None:
        self._done[key] = prepared
        self._progress.update(self._chunks[key].num_bytes, prepared.from_cache)


class _Progress:
    """Progress lines of a preparation: at most one per _PROGRESS_EVERY_S, and a last."""

    def __init__(self, total_bytes: int, total_chunks: int, active: bool):
        self.total_bytes, self.total_chunks, self.active = total_bytes, total_chunks, active
        self.bytes = self.chunks = self.cached = self.cached_bytes = 0
        self.started = self.shown = time.monotonic()

    def update(self, num_bytes: int, from_cache: bool) -> None:
        self.chunks += 1
        self.bytes += num_bytes
        self.cached += from_cache
        self.cached_bytes += num_bytes if from_cache else 0
        now = time.monotonic()
        last = self.chunks == self.total_chunks
        if not self.active or not (last or now - self.shown >= _PROGRESS_EVERY_S):
            return
        self.shown = now
        elapsed = now - self.started
        rate = (self.bytes - self.cached_bytes) / max(elapsed, 1e-9) / 1e6
        cached = f", {self.cached} from the cache" if self.cached else ""
        chunks = f"{self.chunks} chunk{'s' * (self.chunks != 1)}"
        if last and self.cached == self.chunks:
            line = f"corpus prepared: {chunks}, {self.bytes / 1e6:,.1f} MB, all from the cache"
        elif last:
            line = (f"corpus prepared: {chunks}, {self.bytes / 1e6:,.1f} MB in {_clock(elapsed)} "
                    f"({rate:.1f} MB/s{cached})")
        else:
            left = (self.total_bytes - self.bytes) / (rate * 1e6) if rate > 0 else float("nan")
            done = int(24 * self.bytes / max(1, self.total_bytes))
            line = (f"[{'#' * done}{'.' * (24 - done)}] preparing the corpus: {self.chunks}/{self.total_chunks} chunks, "
                    f"{self.bytes / 1e6:,.1f}/"
                    f"{self.total_bytes / 1e6:,.1f} MB, {rate:.1f} MB/s, ETA {_clock(left)}{cached}")
        print(line, flush=True)


class PreparedRows:
    """The rows of one split of a `Preparation`'s chunks (a `flaxft.data.stream.RowSource`)."""

    def __init__(self, preparation: Preparation, split: str, chunks: Sequence[Sequence[Chunk]],
                 special_ids: Mapping[str, int]):
        """
        Args:
            preparation: prepares (at least) this process's streams' chunks.
            split: "train" or "eval".
            chunks: every stream's chunks (all processes'), as planned.
            special_ids: the tokenizer's ids by role.
        """
        self.preparation, self.split, self.special_ids = preparation, split, special_ids
        self.num_streams = len(chunks)
        self._num_chunks = [len(stream) for stream in chunks]
        recipe = preparation.recipe
        # The corpus by its files' names and ranges, not where they lie, and how rows are made of it.
        self.identity = _key("corpus", [[c.place for c in stream] for stream in chunks], recipe.tokenizer_fingerprint,
                             recipe.seq_len, recipe.format, recipe.seed, recipe.short_seq_prob, recipe.eval_fraction)

    def num_chunks(self, stream: int) -> int:
        return self._num_chunks[stream]

    def num_rows(self, stream: int, index: int) -> int:
        return self.preparation.wait(stream, index).rows[self.split]

    def rows(self, stream: int, index: int, rows: np.ndarray) -> Examples:
        tokens, layout = self.preparation.wait(stream, index).open(self.split)
        return fill_rows(tokens, layout, rows, self.preparation.recipe.seq_len, self.special_ids)

    def want(self, chunks: list[tuple[int, int]]) -> None:
        self.preparation.want(chunks)

    def close(self) -> None:
        self.preparation.close()


def _clock(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes < 60 else f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _stop(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Ends `pool`'s workers now, a chunk half-prepared or not (its entry is written whole
    or not at all)."""
    processes = list(getattr(pool, "_processes", {}).values())  # Python < 3.14 has no terminate_workers()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()


def _worker_started() -> None:
    """In each worker: yield the cores to training, and let one worker use one core."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        os.nice(10)
    except OSError:
        pass


@functools.lru_cache(maxsize=2)
def _tokenizer(tokenizer_json: str) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json)


def _key(*parts: object) -> str:
    text = json.dumps([CACHE_FORMAT_VERSION, *parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _empty_layout() -> Layout:
    empty = np.zeros(0, np.int64)
    return Layout(np.zeros(1, np.int64), empty, empty, empty.astype(bool), empty.astype(np.int32),
                  empty.astype(np.int32), empty.astype(np.int32))


def _remove_abandoned_entries(cache_dir: Path, age_s: float = 86400.0) -> None:
    """Removes temporary entry folders a day old (a worker stopped while writing leaves one;
    a younger one may be another host's, still being written)."""
    for entry in cache_dir.glob(".*-*.*"):
        with contextlib.suppress(OSError):
            if entry.is_dir() and time.time() - entry.stat().st_mtime > age_s:
                shutil.rmtree(entry, ignore_errors=True)


def _write_entry(target: Path, splits: Mapping[str, Mapping[str, np.ndarray]], info: dict | None = None) -> None:
    """Writes `splits` ({split: {name: array}}) and `info` as folder `target`, atomically:
    a complete entry or none (another writer's entry wins)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for split, arrays in splits.items():
            (tmp / split).mkdir()
            for name, array in arrays.items():
                np.save(tmp / split / f"{name}.npy", np.asarray(array))
        if info is not None:
            (tmp / "info.json").write_text(json.dumps(info))
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_info(rows_dir: Path) -> dict | None:
    try:
        return json.loads((rows_dir / "info.json").read_text())
    except (OSError, ValueError):
        return None


def _load(cls, folder: Path):
    """The dataclass `cls` from the `.npy` files in `folder`, memory-mapped (but empty ones)."""
    return cls(**{field.name: _load_array(folder / f"{field.name}.npy") for field in dataclasses.fields(cls)})


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an empty array cannot be mapped
        return np.load(path)

