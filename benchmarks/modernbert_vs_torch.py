"""ModernBERT-base masked-LM train step: flaxft against transformers (PyTorch), alternately.

    python benchmarks/modernbert_vs_torch.py [--pairs 3] [--pads 0,0.25] [--steps 3] \
        [--peer ../shared/peers/torch_modernbert_step.py] [--peer_python PYTHON] [--out FILE.jsonl] \
        [-- EXTRA FLAXFT.BENCH FLAGS]

For each pair and each padding share it runs `python -m flaxft.bench` (configs/
pretrain_modernbert_base.py at batch 8 x 128, 39 masked slots = 30% of 128, the special
ids of the byte-level BPE the bench trains on the offline corpus) and then the peer
(`torch_modernbert_step.py base 8 128 STEPS PAD`), one process at a time, so neighbouring
runs see the same machine; on a shared machine only those ratios mean anything. Both
count every position (padding included) in tokens/s.

Measured per run, the same way for both: tokens/s as the program prints it (median step
for flaxft, mean of the timed steps for the peer); process CPU seconds per timed step
(flaxft.bench's step_cpu_s; for the peer, process time between the two clock readings
around its timed loop, read by wrapping time.perf_counter); peak resident memory of the
whole process (ru_maxrss from wait4); the 1-minute load average before each run (other
jobs on the machine: a peer with 2 OpenMP threads slows down far more than flaxft when
cores are taken from it). flaxft's MFU (wall and CPU time) is flaxft.bench's.
Prints one line per run, then a table of the pairs; --out also writes every run as JSON.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEER = REPO.parent / "shared" / "peers" / "torch_modernbert_step.py"
FLAXFT_ARGS = (
    "--config", str(REPO / "configs" / "pretrain_modernbert_base.py"),
    "--config.global_batch_size=8", "--config.seq_len=128", "--config.data.max_predictions_per_seq=39",
    # The ids of the byte-level BPE pretraining trains on the offline corpus (<s>=0, <pad>=1, </s>=2).
    "--config.model.pad_token_id=1", "--config.model.bos_token_id=0", "--config.model.cls_token_id=0",
    "--config.model.eos_token_id=2", "--config.model.sep_token_id=2",
)
# Runs the peer unchanged, noting process CPU time at each time.perf_counter() call: the
# peer reads the clock exactly twice, before and after its timed steps.
PEER_WRAPPER = """
import json, runpy, sys, time
marks, clock = [], time.perf_counter
def perf_counter():
    marks.append(time.process_time())
    return clock()
time.perf_counter = perf_counter
path, steps = sys.argv[1], int(sys.argv[5])
sys.argv = sys.argv[1:]
runpy.run_path(path, run_name="__main__")
print(json.dumps({"peer_cpu_s_per_step": (marks[1] - marks[0]) / steps}))
"""


def run(cmd: list[str], env: dict) -> tuple[str, float, float]:
    """(stdout, peak RSS in GB, the machine's 1-minute load average at the start) of one process."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=REPO, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            sys.exit(f"{' '.join(cmd[1:3])} ... exited {proc.returncode}:\n{err.read().decode()[-3000:]}")
    return out, usage.ru_maxrss * 1024 / 1e9, load


def flaxft(pad: float, steps: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "flaxft.bench", *FLAXFT_ARGS, "--steps", str(steps), "--warmup", "1",
           "--pad_fraction", str(pad), *extra]
    out, rss, load = run(cmd, dict(os.environ))
    r = json.loads(out.strip().splitlines()[-1])
    return {"tokens_per_s": r["tokens_per_sec"], "cpu_s_per_step": r["step_cpu_s"], "peak_rss_gb": rss,
            "mfu": r["mfu"], "mfu_cpu_time": r["mfu_cpu_time"], "step_times_s": r["step_times_s"],
            "bench_peak_host_mem_gb": r["peak_host_mem_gb"], "load_before": load}


def peer(pad: float, steps: int, script: Path, python: str) -> dict:
    cmd = [python, "-c", PEER_WRAPPER, str(script), "base", "8", "128", str(steps), str(pad)]
    out, rss, load = run(cmd, dict(os.environ))
    lines = out.strip().splitlines()
    tokens = float(next(w for w in lines[-2].split() if w.startswith("tokens/s=")).split("=")[1])
    return {"tokens_per_s": tokens, "cpu_s_per_step": json.loads(lines[-1])["peer_cpu_s_per_step"],
            "peak_rss_gb": rss, "line": lines[-2], "load_before": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--pads", default="0,0.25", help="comma-separated padding shares of every row")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (both)")
    parser.add_argument("--peer", type=Path, default=DEFAULT_PEER)
    parser.add_argument("--peer_python", default=sys.executable)
    parser.add_argument("--out", type=Path, help="also write every run as a JSON line here")
    parser.add_argument("extra", nargs="*", help="more flaxft.bench flags (after --)")
    args = parser.parse_args()
    pads = [float(p) for p in args.pads.split(",")]
    rows = []
    for pair in range(1, args.pairs + 1):
        for pad in pads:
            f = flaxft(pad, args.steps, args.extra)
            print(f"pair {pair} pad {pad}: flaxft {f['tokens_per_s']:.1f} tokens/s, "
                  f"{f['cpu_s_per_step']:.2f} CPU s/step, {f['peak_rss_gb']:.2f} GB, load {f['load_before']:.1f} before",
                  flush=True)
            t = peer(pad, args.steps, args.peer, args.peer_python)
            print(f"pair {pair} pad {pad}: peer   {t['tokens_per_s']:.1f} tokens/s, "
                  f"{t['cpu_s_per_step']:.2f} CPU s/step, {t['peak_rss_gb']:.2f} GB, load {t['load_before']:.1f} before "
                  f"({t['line']})", flush=True)
            rows.append({"pair": pair, "pad_fraction": pad, "flaxft": f, "peer": t,
                         "ratio_tokens_per_s": f["tokens_per_s"] / t["tokens_per_s"],
                         "ratio_cpu_time": t["cpu_s_per_step"] / f["cpu_s_per_step"]})
            if args.out:
                with args.out.open("a") as fh:
                    fh.write(json.dumps(rows[-1]) + "\n")
    print("\n| pair | pad | flaxft tokens/s | peer tokens/s | ratio | CPU s/step flaxft / peer | ratio by CPU time "
          "| peak RSS GB flaxft / peer | flaxft MFU (wall; CPU time) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, t = r["flaxft"], r["peer"]
        print(f"| {r['pair']} | {r['pad_fraction']} | {f['tokens_per_s']:.0f} | {t['tokens_per_s']:.0f} | "
              f"{r['ratio_tokens_per_s']:.2f}x | {f['cpu_s_per_step']:.2f} / {t['cpu_s_per_step']:.2f} | "
              f"{r['ratio_cpu_time']:.2f}x | {f['peak_rss_gb']:.2f} / {t['peak_rss_gb']:.2f} | "
              f"{f['mfu']:.2f}; {f['mfu_cpu_time']:.2f} |")
    for pad in pads:
        ratios = [r["ratio_tokens_per_s"] for r in rows if r["pad_fraction"] == pad]
        cpu = [r["ratio_cpu_time"] for r in rows if r["pad_fraction"] == pad]
        print(f"pad {pad}: median ratio {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}), "
              f"by CPU time {statistics.median(cpu):.2f}x")


if __name__ == "__main__":
    main()
