"""Corpora at scale: chunks of every input format, streams per process, chunks prepared
by worker processes into the cache, bounded memory, resume, and bad shards."""

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from flaxft.data import (
    DEFAULT_CORPUS,
    InMemory,
    Preparation,
    PreparedRows,
    PretrainLoader,
    Recipe,
    corpus_chunks,
    default_corpus,
    make_examples,
    read_documents,
    sample_documents,
    special_token_ids,
    split_documents,
    tokenize_documents,
)
from flaxft.data.shards import read_chunk
from flaxft.errors import InputError
from tests.tiny import REPO, logged_step, losses, run_main, start_main, steps_on_disk, tiny_flags, wait_for

FORMATS = ("txt", "jsonl", "csv", "parquet", "dataset")


def corpus_documents(count=240):
    """Real prose with what trips readers up: several lines, commas, quotes."""
    docs = default_corpus()[:count]
    return [f'{doc}\nA second line, "quoted", with a comma.' if i % 3 == 0 else doc for i, doc in enumerate(docs)]


def write_corpus_files(folder, documents, fmt, files=2):
    """`documents` dealt in order into `files` files of format `fmt` (or one saved dataset)."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "dataset":
        datasets.Dataset.from_dict({"text": documents}).save_to_disk(str(folder / "saved"))
        return folder / "saved"
    for index, part in enumerate(np.array_split(np.array(documents, dtype=object), files)):
        path = folder / f"shard-{index}.{fmt}"
        if fmt == "txt":
            path.write_text("\n\n \n".join(part))
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps({"id": i, "text": doc}) + "\n" for i, doc in enumerate(part)))
        elif fmt == "csv":
            pd.DataFrame({"id": range(len(part)), "text": list(part)}).to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
        else:
            pd.DataFrame({"text": list(part)}).to_parquet(path, row_group_size=25)
    return folder


@pytest.mark.parametrize("fmt", FORMATS)
def test_chunks_of_every_format_hold_the_documents_whole_and_in_order(tmp_path, fmt):
    documents = corpus_documents()
    path = str(write_corpus_files(tmp_path, documents, fmt))
    chunks = corpus_chunks(path, "text", streams=1, chunk_bytes=8000)[0]
    assert len(chunks) >= 6
    read = [read_chunk(chunk) for chunk in chunks]
    assert all(read)
    assert sum(read, []) == [doc.strip() for doc in documents] == read_documents(path)
    assert len({chunk.identity for chunk in chunks}) == len(chunks)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("files, streams", [(4, 2), (1, 3), (2, 3)])
def test_streams_get_disjoint_shares_that_cover_the_corpus(tmp_path, fmt, files, streams):
    documents = corpus_documents()
    path = str(write_corpus_files(tmp_path, documents, fmt, files))
    plan = corpus_chunks(path, "text", streams=streams, chunk_bytes=6000)
    shares = [[doc for chunk in stream for doc in read_chunk(chunk)] for stream in plan]
    assert all(shares)
    assert sorted(sum(shares, [])) == sorted(doc.strip() for doc in documents)  # each document once
    if files >= streams and fmt != "dataset":  # whole files: stream k reads files k, k + S, ...
        for k, stream in enumerate(plan):
            assert sorted({path for chunk in stream for path in chunk.paths}) == [str(tmp_path / f"shard-{i}.{fmt}")
                                                                for i in range(k, files, streams)]


def test_too_few_documents_for_the_streams_is_an_input_error(tmp_path):
    (tmp_path / "one.txt").write_text("Only one document here.")
    with pytest.raises(InputError, match="stream 1 gets no document.*config.data.streams"):
        corpus_chunks(str(tmp_path / "one.txt"), "text", streams=2)


def test_small_files_are_packed_into_chunks_and_each_stream_gets_documents(tmp_path, tokenizer):
    documents = corpus_documents(12)
    for index, document in enumerate(documents):  # one document per file
        (tmp_path / f"doc-{index:02d}.txt").write_text(document)
    (chunk,), = corpus_chunks(str(tmp_path), "text", streams=1)
    assert len(chunk.pieces) == 12 and read_chunk(chunk) == [doc.strip() for doc in documents]
    preparation = Preparation([(0, 0, chunk)], Recipe(tokenizer.to_str(), 64, "bert", 0, 0.1, 0.2), tmp_path / "c", 0,
                              show_progress=False)
    assert all(preparation.wait(0, 0).rows[split] > 0 for split in ("train", "eval"))
    four = tmp_path / "four.txt"
    four.write_text("\n\n".join(documents[:4]))
    shares = [[d for c in stream for d in read_chunk(c)] for stream in corpus_chunks(str(four), "text", streams=2)]
    assert all(shares) and shares[0] + shares[1] == [d.strip() for d in documents[:4]]  # cut by bytes


def test_a_text_file_without_blank_lines_is_refused_not_scanned_forever(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("One document per line, no blank line between them.\n" * 400)
    with pytest.raises(InputError, match=r"lines\.txt' has no blank line in 0\.00 MB .*write JSON lines"):
        corpus_chunks(str(path), "text", streams=1, chunk_bytes=1000)


def test_a_worker_that_dies_fails_the_wait_instead_of_hanging(tmp_path, tokenizer):
    path = str(write_corpus_files(tmp_path / "corpus", corpus_documents(600), "txt", files=2))
    chunks = corpus_chunks(path, "text", streams=1, chunk_bytes=20000)[0]
    preparation = Preparation([(0, i, c) for i, c in enumerate(chunks)], recipe(tokenizer), tmp_path / "cache", 2,
                              show_progress=False)
    preparation.want([(0, i) for i in range(len(chunks))])
    workers = [int(p.name) for p in Path("/proc").iterdir()
               if p.name.isdigit() and _parent(p) == os.getpid() and b"spawn_main" in (p / "cmdline").read_bytes()]
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    with pytest.raises(RuntimeError, match="a worker process died"):
        for index in range(len(chunks)):
            preparation.wait(0, index)
    preparation.close()


def _parent(proc) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_tokenizer_sample_is_bounded_and_spread(tmp_path):
    documents = corpus_documents(600)
    path = str(write_corpus_files(tmp_path, documents, "txt", files=4))
    total = sum(len(doc.encode()) for doc in documents)
    assert sample_documents(path, "text", 10 * total, 4000) == read_documents(path)
    sample = sample_documents(path, "text", total // 4, 4000)
    assert 0.15 * total < sum(len(doc.encode()) for doc in sample) < 0.35 * total
    stripped = [doc.strip() for doc in documents]
    assert stripped.index(sample[0]) < 50 and stripped.index(sample[-1]) > 500  # start to end


def recipe(tokenizer, fmt="bert", seed=0):
    return Recipe(tokenizer.to_str(), 64, fmt, seed, 0.1, 0.05)


def loader_over(preparation, chunks, tokenizer, split="train", **options):
    rows = PreparedRows(preparation, split, chunks, special_token_ids(tokenizer))
    return PretrainLoader(rows, 8, 0, vocab_size=tokenizer.get_vocab_size(), special_ids=special_token_ids(tokenizer),
                          shuffle=split == "train", prefetch=0, mix_chunks=2, **options)


def batches(loader, steps):
    return [loader.get_batch(step) for step in steps]


def assert_batch_lists_equal(first, second):
    for a, b in zip(first, second, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("fmt", ["bert", "roberta"])
def test_rows_are_the_same_prepared_in_process_by_workers_or_from_the_cache(tmp_path, tokenizer, fmt):
    path = str(write_corpus_files(tmp_path / "corpus", corpus_documents(), "jsonl", files=3))
    chunks = corpus_chunks(path, "text", streams=2, chunk_bytes=10000)
    jobs = [(k, i, c) for k, stream in enumerate(chunks) for i, c in enumerate(stream)]
    steps = [0, 1, 5, 40, 41]  # the last ones in the second epoch
    results = []
    for workers, cache in [(0, "a"), (2, "b"), (2, "a")]:
        preparation = Preparation(jobs, recipe(tokenizer, fmt), tmp_path / cache, workers, show_progress=False)
        train, held_out = (loader_over(preparation, chunks, tokenizer, split) for split in ("train", "eval"))
        results.append((batches(train, steps), batches(held_out, [0, 1])))
        for stream, index, _ in jobs:
            preparation.wait(stream, index)
        train.close()
        assert preparation.chunks_from_cache == (len(jobs) if len(results) == 3 else 0)
    for other in results[1:]:
        assert_batch_lists_equal(results[0][0], other[0])
        assert_batch_lists_equal(results[0][1], other[1])


def test_a_copied_corpus_is_the_same_corpus_to_a_checkpoint_an_edited_one_is_not(tmp_path, tokenizer):
    def identity(folder):
        chunks = corpus_chunks(str(folder), "text", streams=2, chunk_bytes=10000)
        jobs = [(k, i, c) for k, stream in enumerate(chunks) for i, c in enumerate(stream)]
        preparation = Preparation(jobs, recipe(tokenizer), tmp_path / "cache", 0, show_progress=False)
        return PreparedRows(preparation, "train", chunks, special_token_ids(tokenizer)).identity

    original = write_corpus_files(tmp_path / "corpus", corpus_documents(), "jsonl", files=3)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    assert identity(copy) == identity(original)
    with open(copy / "shard-2.jsonl", "a") as f:
        f.write(json.dumps({"text": "One more document."}) + "\n")
    assert identity(copy) != identity(original)


def test_entries_a_stopped_worker_left_half_written_are_removed_after_a_day(tmp_path, tokenizer):
    old, young = tmp_path / ".rows-0123.abcd", tmp_path / ".tokens-4567.efgh"
    for folder in (old, young):
        folder.mkdir()
        (folder / "token_ids.npy").write_bytes(b"partial")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    Preparation([], recipe(tokenizer), tmp_path, 0, show_progress=False)
    assert not old.exists() and young.exists()


def test_one_chunk_gives_the_rows_make_examples_makes_of_the_corpus(tmp_path, tokenizer):
    """A corpus of one chunk (the default corpus, small files) keeps the examples and order
    it always had: a workdir of an earlier version resumes on the same batches."""
    documents = corpus_documents()
    chunks = corpus_chunks(documents, "text", streams=1)
    assert len(chunks[0]) == 1
    preparation = Preparation([(0, 0, chunks[0][0])], recipe(tokenizer), tmp_path, 0, show_progress=False)
    tokens = tokenize_documents(documents, tokenizer)
    train, _ = split_documents(tokens.num_documents, 0.05)
    examples = make_examples(tokens.select(train), 64, "bert", 0, special_token_ids(tokenizer))
    options = dict(vocab_size=tokenizer.get_vocab_size(), special_ids=special_token_ids(tokenizer), prefetch=0)
    prepared = PretrainLoader(PreparedRows(preparation, "train", chunks, special_token_ids(tokenizer)), 8, 3, **options)
    in_memory = PretrainLoader(InMemory([[examples]]), 8, 3, **options)
    assert_batch_lists_equal(batches(prepared, range(4)), batches(in_memory, range(4)))


def test_bad_shards_name_the_file(tmp_path, tokenizer):
    folder = tmp_path / "corpus"
    write_corpus_files(folder, corpus_documents(), "jsonl", files=2)
    with open(folder / "shard-1.jsonl", "a") as f:
        f.write('{"body": "no text column"}\n')
    chunks = corpus_chunks(str(folder), "text", streams=1, chunk_bytes=10000)[0]
    with pytest.raises(InputError, match=r"shard-1\.jsonl': line 121 has no text column 'text'"):
        for chunk in chunks:
            read_chunk(chunk)
    (folder / "shard-1.jsonl").unlink()
    (folder / "shard-2.txt").write_bytes(b"Fine text.\n\n\xff\xfe not UTF-8")
    jobs = [(0, i, c) for i, c in enumerate(corpus_chunks(str(folder), "text", 1, 10000)[0])]
    preparation = Preparation(jobs, recipe(tokenizer), tmp_path / "cache", 2, show_progress=False)
    with pytest.raises(InputError, match=r"cannot read corpus file .*shard-2\.txt"):
        for stream, index, _ in jobs:
            preparation.wait(stream, index)
    preparation.close()
    pd.DataFrame({"body": ["x"]}).to_parquet(tmp_path / "wrong.parquet")
    with pytest.raises(InputError, match=r"wrong\.parquet' has no text column 'text' \(columns: \['body'\]\)"):
        corpus_chunks(str(tmp_path / "wrong.parquet"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"cannot read corpus file .*broken\.parquet"):
        corpus_chunks(str(tmp_path / "broken.parquet"))


def test_a_bad_shard_met_during_training_exits_2_naming_it(tmp_path):
    folder = tmp_path / "corpus"
    write_corpus_files(folder, corpus_documents(), "txt", files=3)
    with open(folder / "shard-2.txt", "ab") as f:
        f.write(b"\n\nA document that is not UTF-8: \xff\xfe.")
    result = run_main(folder, tmp_path / "work", **{"data.chunk_mb": 0.01, "data.workers": 2, "data.mix_chunks": 1})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot read corpus file" in result.stderr and "shard-2.txt" in result.stderr


def test_parts_prepared_ahead_on_several_machines_leave_training_nothing_to_read(tmp_path):
    folder = write_corpus_files(tmp_path / "corpus", corpus_documents(), "txt", files=3)
    flags = tiny_flags(folder, **{"data.chunk_mb": 0.02, "data.workers": 0, "num_train_steps": 4})
    for part in ("0/2", "1/2"):
        prepared = subprocess.run([sys.executable, "-m", "flaxft.prepare_corpus", *flags, "--workdir",
                                   str(tmp_path / "work"), "--part", part], cwd=REPO, capture_output=True, text=True)
        assert prepared.returncode == 0, prepared.stderr
        assert re.search(rf"prepared \d+ chunks \(part {part}\)", prepared.stdout)
    assert (tmp_path / "work" / "tokenizer" / "tokenizer.json").is_file()
    trained = subprocess.run([sys.executable, "-m", "flaxft.main", *flags, "--workdir", str(tmp_path / "work")],
                             cwd=REPO, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    assert re.search(r"corpus prepared: \d+ chunks, [\d.]+ MB, all from the cache", trained.stdout), trained.stdout
    bad = subprocess.run([sys.executable, "-m", "flaxft.prepare_corpus", *flags, "--workdir", str(tmp_path / "w2"),
                          "--part", "2/2"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("--part must be I/N with 0 <= I < N, got '2/2'")


def test_default_corpus_end_to_end(tokenizer, tmp_path):
    chunks = corpus_chunks(DEFAULT_CORPUS, "text", streams=1)
    preparation = Preparation([(0, 0, chunks[0][0])], Recipe(tokenizer.to_str(), 128, "bert", 0, 0.1, 0.02),
                              tmp_path, -1, show_progress=False)
    loader = loader_over(preparation, chunks, tokenizer)
    assert loader.source.num_rows(0, 0) > 3000
    batch = next(loader)
    text = tokenizer.decode(batch["input_ids"][0].tolist(), skip_special_tokens=False)
    assert text.startswith("[CLS]") and "[MASK]" in text
    assert batch["masked_weights"].sum() > 8


def test_data_package_imports_no_jax_or_models():
    program = (
        "import sys, flaxft.data; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'torch') "
        "or m.startswith(('flaxft.models', 'flaxft.train'))]; print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


MEASURE = textwrap.dedent("""
    import resource, sys
    from flaxft.data import Preparation, Recipe, corpus_chunks, load_tokenizer
    path, tokenizer_dir = sys.argv[1], sys.argv[2]
    chunks = corpus_chunks(path, "text", streams=1, chunk_bytes=1 << 20)[0]
    recipe = Recipe(load_tokenizer(tokenizer_dir).to_str(), 128, "bert", 0, 0.1, 0.02)
    preparation = Preparation([(0, i, c) for i, c in enumerate(chunks)], recipe, sys.argv[3], 0, False)
    for i in range(len(chunks)):
        preparation.wait(0, i)
    print(len(chunks), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
""")


@pytest.mark.slow
def test_memory_of_preparing_a_corpus_does_not_grow_with_its_size(tmp_path, minilm_dir):
    """Peak RSS preparing 8 MB, then 32 MB of text (1 MB chunks, in one process)."""
    documents = default_corpus()
    peaks = []
    for megabytes in (8, 32):
        folder = tmp_path / f"c{megabytes}"
        folder.mkdir()
        text = "\n\n".join(documents)
        with open(folder / "corpus.txt", "w") as f:
            for _ in range(int(megabytes * 1e6 / len(text)) + 1):
                f.write(text + "\n\n")
        result = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(minilm_dir), str(tmp_path / "cache")],
                                capture_output=True, text=True, cwd=REPO, check=True)
        chunks, peak_mb = map(int, result.stdout.split())
        assert chunks >= 0.9 * megabytes  # chunks of 1 MiB
        peaks.append(peak_mb)
    print("peak RSS (MB) preparing 8 and 32 MB:", peaks)
    assert peaks[1] - peaks[0] < 40, peaks


@pytest.mark.slow
def test_sigkill_while_chunks_are_prepared_then_resume_is_bit_identical(tmp_path):
    """Chunks in two streams, prepared by two workers while training runs, blocks of
    two chunks: killed at a random step after the first checkpoint, the rerun resumes
    (reading none of the text before its position again) and logs the uninterrupted losses."""
    folder = tmp_path / "corpus"
    write_corpus_files(folder, corpus_documents(600), "txt", files=3)
    run = {"data.chunk_mb": 0.03, "data.workers": 2, "data.mix_chunks": 2, "data.streams": 2,
           "num_train_steps": 24, "checkpoint_every_steps": 6, "eval_every_steps": 12, "log_every_steps": 1}
    reference = run_main(folder, tmp_path / "reference", **run)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    prepared = re.search(r"corpus prepared: (\d+) chunks", reference.stdout)
    assert prepared and int(prepared.group(1)) >= 6, reference.stdout
    seed = int(os.environ.get("FLAXFT_KILL_SEED", random.randrange(2**32)))
    kill_after = random.Random(seed).randrange(7, 22)
    workdir = tmp_path / "killed"
    process = start_main(folder, workdir, **run)
    wait_for(lambda: logged_step(workdir) >= kill_after and steps_on_disk(workdir), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run_main(folder, workdir, **run)
    where = f"killed after step {kill_after} (FLAXFT_KILL_SEED={seed})"
    assert result.returncode == 0, where + result.stdout + result.stderr
    assert "resumed from step" in result.stdout, where
    assert losses(workdir) == losses(tmp_path / "reference"), where
