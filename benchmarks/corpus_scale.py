"""Pretraining data at corpus scale: time to the first step, peak memory, preparation
throughput against the one-process path, and the loader against a step's demand.

    python benchmarks/corpus_scale.py --corpus /tmp/corpus1g [--make_mb 1024 --shards 8]

Makes the corpus with `benchmarks/make_corpus.py` when the folder does not exist, then:

1. **run**: `python -m flaxft.main --config configs/pretrain_tiny.py` on the corpus in a
   fresh workdir (the tokenizer trained on the corpus's sample, chunks prepared by the
   worker processes while training runs), `--steps` steps. Reports seconds from the
   command to the first logged step, and the peak RSS of the whole process tree (the
   training process and its workers, summed, sampled every 0.2 s).
2. **prepare**: `flaxft.data.Preparation` over every chunk of the corpus, one worker per
   core, into an empty cache: MB/s per machine and per core, peak tree RSS.
3. **one process**: what flaxft did before chunks (read every document, tokenize in one
   process, lay out every row, save one `.npz`) on the corpus's first `--baseline_mb` MB:
   MB/s, as `flaxft.main` ran it (the tokenizer on one thread: the CLI sets
   TOKENIZERS_PARALLELISM=false) and with the tokenizer's own threads. Step 2's over
   step 3's rate is the preparation speed-up per machine.
4. **loader**: `flaxft.bench --what data` at `configs/pretrain_bert_base.py`'s shape over
   the prepared cache: tokens/s (on one thread), to set against the bert_base step's
   tokens/s (`flaxft.bench --what train`, README).

Prints one markdown table row per measurement and a JSON line with everything.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def tree_rss_mb(pid: int) -> float:
    """Resident MB of process `pid` and all its descendants, summed."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
        except (OSError, AttributeError):
            pass
        pending += children.get(current, [])
    return total


def watched(command: list[str], marker: str | None = None, env: dict | None = None) -> dict:
    """Runs `command` (with `env` added to the environment); returns its output lines,
    seconds to the first line holding `marker`, wall seconds, and the peak RSS of its
    process tree."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    peak, lines, first = [0.0], [], [None]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in process.stdout:
        lines.append(line.rstrip())
        if marker and first[0] is None and marker in line:
            first[0] = time.perf_counter() - started
    process.wait()
    sampler.join()
    if process.returncode:
        sys.exit("\n".join(lines[-30:]) + f"\nfailed ({process.returncode}): {' '.join(command)}")
    return {"lines": lines, "first_s": first[0], "wall_s": time.perf_counter() - started, "peak_rss_mb": peak[0]}


PREPARE = """
import json, sys, time
from flaxft.data import Preparation, Recipe, corpus_chunks, load_tokenizer
corpus, tokenizer, cache, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
started = time.perf_counter()
chunks = corpus_chunks(corpus, "text", 1, 16 << 20)[0]
preparation = Preparation([(0, i, c) for i, c in enumerate(chunks)], Recipe(load_tokenizer(tokenizer).to_str(),
                          128, "bert", 0, 0.1, 0.02), cache, workers, show_progress=True)
for i in range(len(chunks)):
    preparation.wait(0, i)
preparation.close()
print(json.dumps({"seconds": time.perf_counter() - started, "mb": sum(c.num_bytes for c in chunks) / 1e6,
                  "chunks": len(chunks)}))
"""

ONE_PROCESS = """
import json, sys, time
import numpy as np
from flaxft.data import (corpus_chunks, load_tokenizer, make_examples, special_token_ids, split_documents,
                         tokenize_documents)
from flaxft.data.shards import read_chunk
corpus, tokenizer_dir, out, megabytes = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
tokenizer = load_tokenizer(tokenizer_dir)
started = time.perf_counter()
documents, size = [], 0
for chunk in corpus_chunks(corpus, "text", 1, 16 << 20)[0]:
    if size >= megabytes * 1e6:
        break
    documents += read_chunk(chunk)
    size += chunk.num_bytes
tokens = tokenize_documents(documents, tokenizer)
train, _ = split_documents(tokens.num_documents, 0.02)
examples = make_examples(tokens.select(train), 128, "bert", 0, special_token_ids(tokenizer))
np.savez(out, **vars(examples))
print(json.dumps({"seconds": time.perf_counter() - started, "mb": size / 1e6}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="folder of the corpus (made when missing)")
    parser.add_argument("--make_mb", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--baseline_mb", type=float, default=128)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: run,prepare,one_process,loader")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    corpus = Path(args.corpus)
    if not corpus.exists():
        subprocess.run([sys.executable, "benchmarks/make_corpus.py", str(corpus), "--mb", str(args.make_mb),
                        "--shards", str(args.shards)], cwd=REPO, env=ENV, check=True)
    corpus_mb = sum(f.stat().st_size for f in corpus.iterdir()) / 1e6
    cores = len(os.sched_getaffinity(0))
    result = {"corpus_mb": corpus_mb, "cores": cores}
    with tempfile.TemporaryDirectory(prefix="corpus-scale-") as scratch:
        scratch = Path(scratch)
        workdir = scratch / "run"
        if "run" not in skip:
            run = watched([sys.executable, "-m", "flaxft.main", "--config", "configs/pretrain_tiny.py", "--workdir",
                           str(workdir), f"--config.data.path={corpus}", f"--config.num_train_steps={args.steps}",
                           "--config.log_every_steps=1", f"--config.eval_every_steps={args.steps}",
                           f"--config.checkpoint_every_steps={args.steps}"], marker="step 1/")
            result.update(first_step_s=run["first_s"], run_wall_s=run["wall_s"], run_peak_rss_mb=run["peak_rss_mb"])
            print(f"| run | first step {run['first_s']:.1f} s after the command | peak RSS {run['peak_rss_mb']:,.0f} MB "
                  f"(process tree) | {args.steps} steps in {run['wall_s']:.1f} s |", flush=True)
        tokenizer = str(workdir / "tokenizer") if (workdir / "tokenizer").is_dir() else os.environ.get("TOKENIZER")
        if tokenizer is None:
            sys.exit("no tokenizer: keep the run part or set TOKENIZER to a tokenizer folder")
        cache = scratch / "cache"
        if "prepare" not in skip:
            prep = watched([sys.executable, "-c", PREPARE, str(corpus), tokenizer, str(cache), "-1"])
            stats = json.loads(prep["lines"][-1])
            rate = stats["mb"] / stats["seconds"]
            result.update(prepare_mb_per_s=rate, prepare_mb_per_s_per_core=rate / cores,
                          prepare_peak_rss_mb=prep["peak_rss_mb"], prepare_s=stats["seconds"])
            print(f"| prepare | {stats['mb']:,.0f} MB in {stats['chunks']} chunks in {stats['seconds']:.0f} s: "
                  f"{rate:.2f} MB/s ({rate / cores:.2f} per core) | peak RSS {prep['peak_rss_mb']:,.0f} MB |", flush=True)
        if "one_process" not in skip:
            for threads in ("false", "true"):  # flaxft.main sets TOKENIZERS_PARALLELISM=false
                one = watched([sys.executable, "-c", ONE_PROCESS, str(corpus), tokenizer,
                               str(scratch / "examples.npz"), str(args.baseline_mb)], env={"TOKENIZERS_PARALLELISM": threads})
                stats = json.loads(one["lines"][-1])
                rate = stats["mb"] / stats["seconds"]
                name = "one_process" if threads == "false" else "one_process_tokenizer_threads"
                result.update({f"{name}_mb_per_s": rate, f"{name}_peak_rss_mb": one["peak_rss_mb"]})
                if "prepare_mb_per_s" in result:
                    result[f"prepare_speedup_vs_{name}"] = result["prepare_mb_per_s"] / rate
                print(f"| {name.replace('_', ' ')} | {stats['mb']:,.0f} MB in {stats['seconds']:.0f} s: {rate:.2f} MB/s "
                      f"| peak RSS {one['peak_rss_mb']:,.0f} MB | prepare / this: "
                      f"{result.get(f'prepare_speedup_vs_{name}', float('nan')):.2f}x |", flush=True)
        if "loader" not in skip:
            bench = watched([sys.executable, "-m", "flaxft.bench", "--config", "configs/pretrain_bert_base.py",
                             "--what", "data", f"--config.data.path={corpus}", f"--config.data.tokenizer={tokenizer}",
                             f"--config.data.cache_dir={cache}", "--config.model.vocab_size=30522"])
            stats = json.loads(bench["lines"][-1])
            result.update(loader_tokens_per_s=stats["data_tokens_per_sec"], loader_setup_s=stats["setup_s"],
                          loader_first_batch_s=stats["data_first_batch_s"])
            print(f"| loader | {stats['data_tokens_per_sec']:,.0f} tokens/s at bert_base's shape "
                  f"(b={stats['global_batch_size']}, L={stats['seq_len']}, one thread) | setup {stats['setup_s']:.1f} s, "
                  f"first batch {stats['data_first_batch_s']:.1f} s after it |", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
