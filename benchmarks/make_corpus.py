"""A synthetic English pretraining corpus of any size, for data-pipeline benchmarks and tests.

    python benchmarks/make_corpus.py OUT_DIR [--mb 1024] [--shards 8] [--format txt] [--seed 0]

Writes exactly --shards files OUT_DIR/shard-00000-of-00008.<format>, about --mb / --shards
MB each, that `flaxft.data.read_documents(OUT_DIR)` reads as one corpus (other files already
there are read too: use a new folder). The text is real English: each document joins the
paragraphs of 1 to 8 documents of `flaxft.data.default_corpus()` (standard-library
docstrings, about 1.2 MB), drawn at random, with "\n", so it has several lines and
sentences. Formats:

- txt: documents separated by one blank line;
- jsonl: one {"text": ...} object per line;
- parquet: one string column "text", a row group per batch of 8192 documents (~15 MB);
- csv: a header and one column "text", quoted where needed (csv module).

A shard's budget counts the documents' UTF-8 bytes plus one blank line each (a txt
shard's size); a shard stops at the first document that reaches it. So a given --seed,
--mb and --shards yield the same documents in every format: jsonl and csv shards are a
little larger than the budget (quotes, escapes), parquet ones smaller (compressed).
Prints one line: files, MB written, documents, seconds (1 GB of txt: about 7 s on 2 cores).
"""

import argparse
import csv
import itertools
import json
import time
from pathlib import Path

import numpy as np

from flaxft.data import default_corpus

FORMATS = ("txt", "jsonl", "parquet", "csv")
BATCH = 8192  # documents drawn at a time: one row group of a parquet shard
MAX_PARTS = 8  # source documents per document: 1 to MAX_PARTS


def documents(rng: np.random.Generator, source: list[str], source_bytes: np.ndarray, budget: int):
    """Yields batches (lists) of new documents until their UTF-8 bytes, plus 2 each for the
    blank line after it, reach `budget`."""
    while budget > 0:
        parts = rng.integers(1, MAX_PARTS + 1, size=BATCH)
        picks = rng.integers(0, len(source), size=int(parts.sum()))
        starts = np.concatenate(([0], np.cumsum(parts)))
        sizes = np.add.reduceat(source_bytes[picks], starts[:-1]) + parts + 1  # "\n"s, "\n\n"
        count = min(BATCH, int(np.searchsorted(np.cumsum(sizes), budget)) + 1)
        budget -= int(sizes[:count].sum())
        texts = [source[i] for i in picks[: starts[count]].tolist()]
        bounds = itertools.pairwise(starts[: count + 1].tolist())
        yield ["\n".join(texts[a:b]) for a, b in bounds]


def write_shard(path: Path, format: str, batches) -> int:
    """Writes every batch of documents to `path` in `format`; returns the document count."""
    count = 0
    if format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("text", pa.string())])
        with pq.ParquetWriter(path, schema) as writer:
            for batch in batches:
                writer.write_table(pa.table({"text": batch}, schema=schema))
                count += len(batch)
        return count
    with open(path, "w", encoding="utf-8", newline="") as file:
        if format == "csv":
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(["text"])
        for batch in batches:
            if format == "txt":
                file.write("\n\n".join(batch) + "\n\n")
            elif format == "jsonl":
                lines = (json.dumps({"text": text}, ensure_ascii=False) for text in batch)
                file.write("\n".join(lines) + "\n")
            else:
                writer.writerows([text] for text in batch)
            count += len(batch)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder for the shards (created if missing)")
    parser.add_argument("--mb", type=float, default=1024, help="total MB (10^6 bytes) of text")
    parser.add_argument("--shards", type=int, default=8, help="number of files")
    parser.add_argument("--format", choices=FORMATS, default="txt")
    parser.add_argument("--seed", type=int, default=0, help="numpy default_rng seed")
    args = parser.parse_args()
    if args.shards < 1 or args.mb <= 0:
        parser.error("--shards must be >= 1 and --mb > 0")

    started = time.perf_counter()
    source = default_corpus()
    source_bytes = np.array([len(text.encode()) for text in source], np.int64)
    rng = np.random.default_rng(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    budget = int(args.mb * 1e6 / args.shards)
    total_documents = total_bytes = 0
    for shard in range(args.shards):
        path = args.out_dir / f"shard-{shard:05d}-of-{args.shards:05d}.{args.format}"
        batches = documents(rng, source, source_bytes, budget)
        total_documents += write_shard(path, args.format, batches)
        total_bytes += path.stat().st_size
    print(
        f"wrote {args.shards} {args.format} files, {total_bytes / 1e6:.1f} MB, "
        f"{total_documents} documents to {args.out_dir} in {time.perf_counter() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
