"""A corpus cut into chunks, the units flaxft reads, tokenizes and caches one at a time.

A corpus (see `flaxft.data.corpus` for what names one) is a list of shards: its files in
sorted order, or one Hugging Face dataset, or a list of documents (the offline default
corpus). Shards are dealt to S streams (`data.streams`, by default one per process; a
process serves S / P of them and reads the text of only their shards; planning looks
at every file's size and, for record files, its header): with at least S files,
stream k takes files k, k + S, k + 2S, ...; with fewer, every shard is cut into S parts
and stream k takes part k of each. Every part is then cut into chunks of about
`chunk_bytes` bytes of text (pieces), and consecutive small pieces (small files) are
packed into one chunk up to that size.

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
_LONGEST_DOCUMENT_CHUNKS = 4  # a text file's longest stretch without a blank line, in chunks
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")
# By suffix: how a file's documents are cut and read.
FILE_KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


@dataclasses.dataclass(frozen=True)
class Piece:
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


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Consecutive pieces of one stream's share, prepared as one unit: one piece of a
    large shard, or several small files packed together up to the chunk size."""

    pieces: tuple[Piece, ...]

    @property
    def num_bytes(self) -> int:
        return sum(piece.num_bytes for piece in self.pieces)

    @property
    def identity(self) -> str:
        """Hex digest of its pieces' identities."""
        if len(self.pieces) == 1:
            return self.pieces[0].identity
        return _digest([piece.identity for piece in self.pieces])

    @property
    def paths(self) -> list[str]:
        return [piece.path for piece in self.pieces]

    @property
    def place(self) -> list:
        """What it is without where the corpus lies: each piece's file name (not folder; for
        documents and datasets, their content's digest), kind, range and text column; the
        same for a corpus copied or mounted elsewhere."""
        return [[p.identity if p.kind in ("documents", "dataset") else Path(p.path).name, p.kind, p.start, p.stop,
                 p.text_column] for p in self.pieces]

    @property
    def name(self) -> str:
        """How errors and logs name it."""
        more = f" and {len(self.pieces) - 1} more file(s)" if len(self.pieces) > 1 else ""
        return self.pieces[0].name + more


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
    parts = {file: _FilePlan.of(file, text_column, chunk_bytes).pieces(splits, chunk_bytes) for file in files}
    chunks = [_packed([piece for file, part in stream for piece in parts[file][part]], chunk_bytes)
              for stream in dealt]
    _check_every_stream_has_chunks(chunks, f"the {len(files)} corpus file(s)")
    return chunks


def _packed(pieces: list[Piece], chunk_bytes: int) -> list[Chunk]:
    """Consecutive `pieces` grouped into chunks: a group takes the next piece while it
    stays within `chunk_bytes` (a piece of a large file, about that size, stays alone)."""
    chunks, group = [], []
    for piece in pieces:
        if group and sum(p.num_bytes for p in group) + piece.num_bytes > chunk_bytes:
            chunks.append(Chunk(tuple(group)))
            group = []
        group.append(piece)
    return chunks + ([Chunk(tuple(group))] if group else [])


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
    for k in range(streams):
        first, stop = num_records * k // streams, num_records * (k + 1) // streams
        stream = []
        if stop > first:
            pieces = max(1, round((stop - first) * bytes_per_record / chunk_bytes))
            bounds = np.linspace(first, stop, pieces + 1).round().astype(int).tolist()
            for start, end in zip(bounds[:-1], bounds[1:]):
                if end > start:
                    held = tuple(documents[start:end])
                    size = sum(map(len, held)) if held else round((end - start) * bytes_per_record)
                    identity = _digest([kind, fingerprint, text_column, start, end])
                    stream.append(Chunk((Piece(kind, path, start, end, size, identity, text_column, documents=held),)))
        chunks.append(stream)
    _check_every_stream_has_chunks(chunks, f"{path or 'the corpus'!r} ({num_records} records)")
    return chunks


def read_chunk(chunk: Chunk) -> list[str]:
    """The documents of `chunk`, stripped, blank ones dropped.

    Raises:
        InputError: naming the file, for an unreadable file, undecodable text, a record
            that is not JSON or lacks the text column.
    """
    texts = []
    for piece in chunk.pieces:
        try:
            texts += _READERS[piece.kind](piece)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise InputError(f"cannot read corpus file {piece.path!r}: {e}") from e
    return [text.strip() for text in texts if text and text.strip()]


def _check_every_stream_has_chunks(chunks: list[list[Chunk]], what: str) -> None:
    empty = [k for k, stream in enumerate(chunks) if not stream]
    if empty and len(chunks) == 1:
        raise InputError(f"{what} hold no document")
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
    chunk_bytes_hint: int = 16 << 20

    @classmethod
    def of(cls, file: Path, text_column: str, chunk_bytes: int) -> "_FilePlan":
        if file.suffix.lower() in _COMPRESSED:
            raise InputError(f"corpus file {str(file)!r} is compressed: decompress it first")
        kind = FILE_KINDS.get(file.suffix.lower(), "text")
        try:
            stat = file.stat()
            fingerprint = _digest([str(file.resolve()), stat.st_size, stat.st_mtime_ns, kind, text_column])
            if kind == "parquet":
                return cls(file, kind, *_parquet_size(file, text_column), fingerprint, text_column,
                           chunk_bytes_hint=chunk_bytes)
            header = _csv_header(file, text_column) if kind == "csv" else b""
            if kind == "jsonl":
                _check_first_json_line(file, text_column)
            return cls(file, kind, stat.st_size, stat.st_size, fingerprint, text_column, header, chunk_bytes)
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read corpus file {str(file)!r}: {e}") from e

    def pieces(self, parts: int, chunk_bytes: int) -> list[list[Piece]]:
        """The file cut into `parts` parts, each into pieces of about `chunk_bytes`: every
        cut found in one pass over the file (CSV files are scanned from their start)."""
        begin, end = len(self.header), self.size
        scale = self.text_bytes / max(1, end - begin)
        bounds = [begin + (end - begin) * k / parts for k in range(parts + 1)]
        inner = [list(np.linspace(a, b, max(1, round((b - a) * scale / chunk_bytes)) + 1)[1:-1])
                 for a, b in zip(bounds[:-1], bounds[1:])]
        wanted = sorted({*bounds[1:-1], *(x for part in inner for x in part)})
        cut = dict(zip(wanted, self._cuts(wanted)))
        edges = [begin, *(cut[x] for x in bounds[1:-1]), end]
        pieces = []
        for (start, stop), positions in zip(zip(edges[:-1], edges[1:]), inner):
            cuts = sorted({start, stop, *(min(max(cut[x], start), stop) for x in positions)})
            pieces.append([
                Piece(self.kind, str(self.file), a, b, round((b - a) * scale), _digest([self.fingerprint, a, b]),
                      self.text_column, self.header)
                for a, b in zip(cuts[:-1], cuts[1:])
            ])
        return pieces

    def _cuts(self, positions: list[float]) -> list[int]:
        """For each of the ascending `positions` inside the file, the first document
        start at or after it (or the end)."""
        positions = [min(max(int(round(x)), len(self.header) + 1), self.size) for x in positions]
        if self.kind == "parquet":
            return positions
        if self.kind == "csv":
            return _csv_boundaries(self.file, positions)
        return [self._cut(position) for position in positions]

    def _cut(self, position: int) -> int:
        """Text: the end of the first blank-line run that ends after `position`; JSON
        lines: the start of the first line at or after it. Reads forward from `position`
        a window at a time, keeping only a possible partial run."""
        limit = _LONGEST_DOCUMENT_CHUNKS * self.chunk_bytes_hint
        with open(self.file, "rb") as f:
            f.seek(position - 1)
            offset, data = position - 1, b""
            while True:
                block = f.read(_WINDOW)
                data += block
                if self.kind == "jsonl":
                    newline = data.find(b"\n")
                    if newline >= 0:
                        return offset + newline + 1
                    offset, data = offset + len(data), b""
                else:
                    run = _BLANK_LINE_RUN.search(data)
                    if run and (run.end() < len(data) or not block):
                        return offset + run.end()
                    keep = max(data.rfind(b"\n"), 0)
                    offset, data = offset + keep, data[keep:]
                if not block:
                    return self.size
                if offset - position > limit:
                    raise InputError(
                        f"corpus file {str(self.file)!r} has no blank line in {limit / 1e6:,.2f} MB after byte "
                        f"{position}: documents in text files are separated by blank lines (one document per line? "
                        f"write JSON lines)")


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


def _read_range(piece: Piece) -> bytes:
    with open(piece.path, "rb") as f:
        f.seek(piece.start)
        return f.read(piece.stop - piece.start)


def _read_text(piece: Piece) -> list[str]:
    return _BLANK_LINES.split(_read_range(piece).decode("utf-8"))


def _read_jsonl(piece: Piece) -> list[str]:
    data = _read_range(piece)
    try:
        return _json_texts(data, piece.path, piece.text_column, first_line=1)
    except InputError:
        if not piece.start:
            raise
    lines_before = 0  # an error names the line counted from the file's start
    with open(piece.path, "rb") as f:
        for _ in range(0, piece.start, _WINDOW):
            lines_before += f.read(min(_WINDOW, piece.start - f.tell())).count(b"\n")
    return _json_texts(data, piece.path, piece.text_column, first_line=1 + lines_before)


def _read_csv(piece: Piece) -> list[str]:
    import pandas as pd

    frame = pd.read_csv(io.BytesIO(piece.header + _read_range(piece)), dtype=str, keep_default_na=False,
                        usecols=[piece.text_column])
    return frame[piece.text_column].tolist()


def _read_parquet(piece: Piece) -> list[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(piece.path)
    texts, first = [], 0
    for group in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if first < piece.stop and first + rows > piece.start:
            column = parquet.read_row_group(group, columns=[piece.text_column]).column(0)
            texts += column.slice(max(0, piece.start - first), piece.stop - max(piece.start, first)).to_pylist()
        first += rows
    return ["" if text is None else str(text) for text in texts]


@functools.cache
def _dataset(path: str):
    return load_train_split(path, "corpus")


def _read_dataset(piece: Piece) -> list[str]:
    rows = _dataset(piece.path).select_columns([piece.text_column])[piece.start:piece.stop]
    return [text or "" for text in rows[piece.text_column]]


_READERS = {
    "text": _read_text, "jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet,
    "dataset": _read_dataset, "documents": lambda piece: list(piece.documents),
}
