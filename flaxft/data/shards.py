"""A corpus cut into chunks, the units flaxft reads, tokenizes and caches one at a time.

A corpus (see `flaxft.data.corpus` for what names one) is a list of shards: its files in
sorted order, or one Hugging Face dataset, or a list of documents (the offline default
corpus). Shards are dealt to S streams (`data.streams`, by default one per process; a
process serves S / P of them and reads only their shards): with at least S files,
stream k takes files k, k + S, k + 2S, ...; with fewer, every shard is cut into S parts
and stream k takes part k of each. Every part is then cut into chunks of about
`chunk_bytes` bytes of text.

Cuts fall between documents, so a document is never split across chunks, streams or
processes: plain text at the end of a run of blank lines, JSON lines and CSV at the end
of a record (for CSV, a newline outside quotes), Parquet files and datasets between
records. Reading a chunk (`read_chunk`) reads only its byte or record range, so memory
follows the chunk size, never the corpus size. The documents of all chunks of a corpus,
in order, are exactly those `read_documents` returns for it.
"""

import dataclasses
import functools
import hashlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from flaxft.data.hub import load_train_split
from flaxft.errors import InputError

_BLANK_LINES = re.compile(r"\n\s*\n")
_BLANK_LINE_RUN = re.compile(rb"\n[^\S\n]*\n(?:[^\S\n]*\n)*")
_WINDOW = 1 << 20
# By suffix: how a file's documents are cut and read.
FILE_KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A range of one shard's documents.

    Attributes:
        kind: "text", "jsonl", "csv", "parquet", "dataset" or "documents".
        path: the file, the dataset folder or hub name; "" for "documents".
        start, stop: the byte range ("text", "jsonl", "csv") or the record range (others).
        num_bytes: bytes of text in it (for Parquet and datasets an estimate): progress
            and throughput are counted in these.
        identity: hex digest of everything its documents depend on (file size and
            modification time, range, text column), the key of its cache entries.
        text_column: the text field of records.
        header: "csv": the file's header record, read before the range.
        documents: "documents": the documents themselves.
    """

    kind: str
    path: str
    start: int
    stop: int
    num_bytes: int
    identity: str
    text_column: str = "text"
    header: bytes = b""
    documents: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """How errors and logs name it: the file and its range."""
        unit = "bytes" if self.kind in ("text", "jsonl", "csv") else "records"
        return f"{self.path or 'documents'} ({unit} {self.start}-{self.stop})"


def file_chunks(files: Sequence[Path], text_column: str, streams: int, chunk_bytes: int) -> list[list[Chunk]]:
    """The chunks of each of `streams` streams of a corpus made of `files` (sorted).

    Raises:
        InputError: a file is unreadable, a record file lacks `text_column`, or a stream
            would get no document (fewer documents than streams).
    """
    if len(files) >= streams:
        parts = [[(file, 0)] for file in files]  # (file, part index): whole files
        dealt = [[part for shard in parts[k::streams] for part in shard] for k in range(streams)]
    else:
        dealt = [[(file, k) for file in files] for k in range(streams)]
    splits = 1 if len(files) >= streams else streams
    plans = {file: _FilePlan.of(file, text_column) for file in files}
    chunks = [[c for file, part in stream for c in plans[file].chunks(part, splits, chunk_bytes)] for stream in dealt]
    _check_every_stream_has_chunks(chunks, f"the {len(files)} corpus file(s)")
    return chunks


def record_chunks(
    kind: str, path: str, num_records: int, num_bytes: int, fingerprint: str, text_column: str, streams: int,
    chunk_bytes: int, documents: Sequence[str] = (),
) -> list[list[Chunk]]:
    """The chunks of each of `streams` streams of one record source: a dataset (`kind`
    "dataset", `path` its folder or hub name) or in-memory `documents` ("documents").
    Records are cut into `streams` equal parts, each into chunks of about `chunk_bytes`
    (`num_bytes` is the source's size in bytes of text, exact or estimated)."""
    bytes_per_record = max(1.0, num_bytes / max(1, num_records))
    chunks = []
    for part in np.array_split(np.arange(num_records), streams):
        stream = []
        if len(part):
            first, stop = int(part[0]), int(part[-1]) + 1
            pieces = max(1, round((stop - first) * bytes_per_record / chunk_bytes))
            bounds = np.linspace(first, stop, pieces + 1).round().astype(int).tolist()
            for start, end in zip(bounds[:-1], bounds[1:]):
                if end > start:
                    held = tuple(documents[start:end])
                    size = sum(map(len, held)) if held else round((end - start) * bytes_per_record)
                    identity = _digest([kind, fingerprint, text_column, start, end])
                    stream.append(Chunk(kind, path, start, end, size, identity, text_column, documents=held))
        chunks.append(stream)
    _check_every_stream_has_chunks(chunks, f"{path or 'the corpus'!r} ({num_records} records)")
    return chunks


def read_chunk(chunk: Chunk) -> list[str]:
    """The documents of `chunk`, stripped, blank ones dropped.

    Raises:
        InputError: naming the file, for an unreadable file, undecodable text, a record
            that is not JSON or lacks the text column.
    """
    try:
        texts = _READERS[chunk.kind](chunk)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"cannot read corpus file {chunk.path!r}: {e}") from e
    return [text.strip() for text in texts if text and text.strip()]


def _check_every_stream_has_chunks(chunks: list[list[Chunk]], what: str) -> None:
    empty = [k for k, stream in enumerate(chunks) if not stream]
    if empty:
        raise InputError(f"{what} cannot be dealt to {len(chunks)} streams: stream {empty[0]} gets no document "
                         f"(config.data.streams, by default one per process: give more files or fewer streams)")


def _digest(parts: list) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class _FilePlan:
    """One file, ready to be cut: its kind, size and (CSV) header."""

    file: Path
    kind: str
    size: int  # bytes, or records for Parquet
    text_bytes: int
    fingerprint: str
    text_column: str
    header: bytes = b""

    @classmethod
    def of(cls, file: Path, text_column: str) -> "_FilePlan":
        kind = FILE_KINDS.get(file.suffix.lower(), "text")
        try:
            stat = file.stat()
            fingerprint = _digest([str(file.resolve()), stat.st_size, stat.st_mtime_ns, kind, text_column])
            if kind == "parquet":
                return cls(file, kind, *_parquet_size(file, text_column), fingerprint, text_column)
            header = _csv_header(file, text_column) if kind == "csv" else b""
            if kind == "jsonl":
                _check_first_json_line(file, text_column)
            return cls(file, kind, stat.st_size, stat.st_size, fingerprint, text_column, header)
        except OSError as e:
            raise InputError(f"cannot read corpus file {str(file)!r}: {e}") from e

    def chunks(self, part: int, parts: int, chunk_bytes: int) -> list[Chunk]:
        """Part `part` of `parts` of the file, cut into chunks of about `chunk_bytes`."""
        begin, end = len(self.header), self.size
        start, stop = self._boundaries(np.linspace(begin, end, parts + 1)[[part, part + 1]])
        scale = self.text_bytes / max(1, self.size - begin)
        pieces = max(1, round((stop - start) * scale / chunk_bytes))
        bounds = sorted(set(self._boundaries(np.linspace(start, stop, pieces + 1))))
        return [
            Chunk(self.kind, str(self.file), a, b, round((b - a) * scale), _digest([self.fingerprint, a, b]),
                  self.text_column, self.header)
            for a, b in zip(bounds[:-1], bounds[1:])
        ]

    def _boundaries(self, positions: np.ndarray) -> list[int]:
        """For each of the ascending `positions`, the first cut at or after it."""
        begin = len(self.header)
        inside = [int(round(x)) for x in positions if begin < round(x) < self.size]
        cuts = _csv_boundaries(self.file, inside) if self.kind == "csv" else map(self._boundary, inside)
        cut = dict(zip(inside, cuts))
        return [cut.get(int(round(x)), min(max(int(round(x)), begin), self.size)) for x in positions]

    def _boundary(self, position: int) -> int:
        """The first cut at or after `position` (strictly inside a text or JSON-lines
        file): where a document starts, or the end."""
        if self.kind == "parquet":
            return position
        with open(self.file, "rb") as f:
            f.seek(position - 1)
            if self.kind == "jsonl" and f.read(1) == b"\n":
                return position
            buffer = b""
            while True:
                block = f.read(_WINDOW)
                buffer += block
                if self.kind == "jsonl":
                    newline = buffer.find(b"\n", 1)
                    if newline >= 0:
                        return position - 1 + newline + 1
                else:
                    run = _BLANK_LINE_RUN.search(buffer, 1)
                    if run and (run.end() < len(buffer) or not block):
                        return position - 1 + run.end()
                if not block:
                    return self.size


def _parquet_size(file: Path, text_column: str) -> tuple[int, int]:
    """(records, uncompressed bytes of the text column) of a Parquet file."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(file).metadata
    except Exception as e:  # noqa: BLE001 -- any failure is an unreadable file
        raise InputError(f"cannot read corpus file {str(file)!r}: {e}") from e
    columns = metadata.schema.names
    if text_column not in columns:
        raise InputError(f"corpus file {str(file)!r} has no text column {text_column!r} (columns: {columns})")
    index = columns.index(text_column)
    text_bytes = sum(metadata.row_group(g).column(index).total_uncompressed_size for g in range(metadata.num_row_groups))
    return metadata.num_rows, text_bytes


def _csv_header(file: Path, text_column: str) -> bytes:
    """The header record of a CSV file (InputError if it lacks `text_column`)."""
    import pandas as pd

    with open(file, "rb") as f:
        head = f.read(_WINDOW)
    end = _csv_boundaries(file, [1])[0]
    try:
        columns = list(pd.read_csv(io.BytesIO(head[:end]), nrows=0).columns)
    except ValueError as e:
        raise InputError(f"cannot read corpus file {str(file)!r}: {e}") from e
    if text_column not in columns:
        raise InputError(f"corpus file {str(file)!r} has no text column {text_column!r} (columns: {columns})")
    with open(file, "rb") as f:
        return f.read(end)


def _csv_boundaries(file: Path, positions: list[int]) -> list[int]:
    """For each of the sorted `positions`, the first record end at or after it (the byte
    after a newline outside quotes; RFC 4180 doubles quotes inside quotes, so "outside"
    is an even count of quotes before it), or the file size."""
    found, pending, quotes, offset = [], list(positions), 0, 0
    with open(file, "rb") as f:
        while pending:
            block = f.read(16 * _WINDOW)
            if not block:
                break
            data = np.frombuffer(block, np.uint8)
            parity = (quotes + np.cumsum(data == ord('"'))) % 2
            ends = offset + np.flatnonzero((data == ord("\n")) & (parity == 0)) + 1
            while pending and len(ends) and ends[-1] >= pending[0]:
                found.append(int(ends[np.searchsorted(ends, pending.pop(0))]))
            quotes, offset = int(parity[-1]) if len(parity) else quotes, offset + len(block)
    return found + [offset] * len(pending)


def _check_first_json_line(file: Path, text_column: str) -> None:
    with open(file, "rb") as f:
        first = f.readline()
    if first.strip():
        _json_texts(first, file, text_column, first_line=1)


def _json_texts(data: bytes, file: Path | str, text_column: str, first_line: int) -> list[str]:
    """The `text_column` of every JSON object in JSON-lines `data`; errors name the line."""
    texts = []
    for number, line in enumerate(data.decode("utf-8").split("\n"), first_line):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"corpus file {str(file)!r}: line {number} is not JSON ({e.msg})") from None
        if not isinstance(record, dict) or text_column not in record:
            raise InputError(f"corpus file {str(file)!r}: line {number} has no text column {text_column!r}")
        texts.append("" if record[text_column] is None else str(record[text_column]))
    return texts


def _read_range(chunk: Chunk) -> bytes:
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        return f.read(chunk.stop - chunk.start)


def _read_text(chunk: Chunk) -> list[str]:
    return _BLANK_LINES.split(_read_range(chunk).decode("utf-8"))


def _read_jsonl(chunk: Chunk) -> list[str]:
    data = _read_range(chunk)
    first_line = 1
    if chunk.start:  # line numbers in errors count from the file's start
        with open(chunk.path, "rb") as f:
            first_line += f.read(chunk.start).count(b"\n")
    return _json_texts(data, chunk.path, chunk.text_column, first_line)


def _read_csv(chunk: Chunk) -> list[str]:
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(chunk.header + _read_range(chunk)), dtype=str, keep_default_na=False,
                        usecols=[chunk.text_column])
    return frame[chunk.text_column].tolist()


def _read_parquet(chunk: Chunk) -> list[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(chunk.path)
    texts, first = [], 0
    for group in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if first < chunk.stop and first + rows > chunk.start:
            column = parquet.read_row_group(group, columns=[chunk.text_column]).column(0)
            texts += column.slice(max(0, chunk.start - first), chunk.stop - max(chunk.start, first)).to_pylist()
        first += rows
    return ["" if text is None else str(text) for text in texts]


@functools.cache
def _dataset(path: str):
    return load_train_split(path, "corpus")


def _read_dataset(chunk: Chunk) -> list[str]:
    return [text or "" for text in _dataset(chunk.path)[chunk.start:chunk.stop][chunk.text_column]]


_READERS = {
    "text": _read_text, "jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet,
    "dataset": _read_dataset, "documents": lambda chunk: list(chunk.documents),
}
