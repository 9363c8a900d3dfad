"""What the user sees of a run: a console progress line, metrics.jsonl, TensorBoard
events and a loss plot (only the writing process, process 0, writes those), and the log
file that keeps what libraries log, away from the console."""

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from flaxft.files import write_text_atomically

CONFIG_FILE = "config.json"
LOG_FILE = "flaxft.log"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
TENSORBOARD_DIR = "tensorboard"


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors scalars to
    TensorBoard, grouped there as `train/<name>` and `eval/<name>` (metrics.jsonl keeps the
    `eval_` prefix). `active=False` (processes other than 0) makes every call a no-op."""

    def __init__(self, workdir: str | os.PathLike, active: bool = True, purge_step: int | None = None):
        """purge_step: on resume, the first step not yet in the checkpoint; TensorBoard
        drops events of that step and later that the interrupted run wrote."""
        self.workdir = Path(workdir)
        self.active = active
        self._tb = None
        if active:
            self._tb = _summary_writer_class()(str(self.workdir / TENSORBOARD_DIR), purge_step=purge_step)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.active:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        with open(self.workdir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                tag = f"eval/{key[len('eval_'):]}" if key.startswith("eval_") else f"train/{key}"
                self._tb.add_scalar(tag, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch, when
    it is installed, only to accept its tensors (a second of start-up; the writer gets
    floats here), so `import torch` fails while tensorboardX loads, unless torch is loaded
    already."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _plain(value):
    value = float(value)
    return value if math.isfinite(value) else str(value)


def write_config(workdir: str | os.PathLike, config_dict: dict) -> None:
    """WORKDIR/config.json: the run's resolved config as indented JSON, keys sorted."""
    write_text_atomically(Path(workdir) / CONFIG_FILE, json.dumps(config_dict, indent=2, sort_keys=True) + "\n")


def config_changes(saved: dict, current: dict, limit: int = 8) -> str:
    """The keys (dotted) whose values differ between two config dicts, as one line
    "key old -> new; ..." ("" when none; at most `limit` listed)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    old, new = flat(saved), flat(current)
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    more = f"; and {len(changed) - limit} more" if len(changed) > limit else ""
    return "; ".join(changed[:limit]) + more


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """Every record of WORKDIR/metrics.jsonl, in order."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(workdir: str | os.PathLike, last_step: int) -> None:
    """Drops records after `last_step` from metrics.jsonl (a resumed run writes them again),
    so the file reads as if the run had never been interrupted."""
    path = Path(workdir) / METRICS_FILE
    if path.exists():
        kept = [json.dumps(r) + "\n" for r in read_metrics(workdir) if r["step"] <= last_step]
        write_text_atomically(path, "".join(kept))


def plot_losses(workdir: str | os.PathLike) -> Path | None:
    """Draws training loss and eval loss against step into WORKDIR/loss.png."""
    records = read_metrics(workdir)
    train = [(r["step"], r["loss"]) for r in records if isinstance(r.get("loss"), float)]
    evals = [(r["step"], r["eval_loss"]) for r in records if isinstance(r.get("eval_loss"), float)]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(workdir) / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class ProgressBar:
    """One console line: bar, step, ETA, loss and tokens/s; redrawn in place on a
    terminal, printed as plain lines otherwise (logs, CI). The ETA is measured from the
    first update on, so compilation and the first step's warm-up do not count."""

    EVAL_QUIET_S = 5.0  # evaluation shows its progress once it has taken this long

    def __init__(self, total_steps: int, active: bool = True, stream=None):
        self.total = total_steps
        self.active = active
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._first: tuple[int, float] | None = None  # (step, time) of the first update
        self._eval_start = self._eval_shown = 0.0

    def update(self, step: int, loss: float, tokens_per_sec: float) -> None:
        if not self.active:
            return
        now = time.monotonic()
        if self._first is None:
            self._first = (step, now)
        first_step, first_time = self._first
        eta = float("nan")
        if step > first_step:
            eta = (now - first_time) / (step - first_step) * (self.total - step)
        width = 24
        bar = "#" * int(width * step / self.total) + "." * (width - int(width * step / self.total))
        line = (f"[{bar}] step {step}/{self.total}  ETA {_clock(eta)}  loss {loss:.4f}  "
                f"{tokens_per_sec:,.0f} tokens/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if step >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def evaluating(self, batch: int, num_batches: int) -> None:
        """Called before each evaluation batch: shows "evaluating i/n" every few seconds
        once the evaluation has run EVAL_QUIET_S seconds (in place on a terminal)."""
        if not self.active:
            return
        now = time.monotonic()
        if batch == 0:
            self._eval_start = self._eval_shown = now
            return
        if now - self._eval_start < self.EVAL_QUIET_S or now - self._eval_shown < self.EVAL_QUIET_S:
            return
        self._eval_shown = now
        line = f"evaluating: batch {batch}/{num_batches}, {_clock(now - self._eval_start)} so far"
        self.stream.write("\r" + line if self.tty else line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.active:
            self.stream.write(("\n" if self.tty else "") + text + "\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def log_file(workdir: str | os.PathLike, process_index: int) -> Path:
    """WORKDIR/flaxft.log for process 0, WORKDIR/flaxft.process_<i>.log for the others."""
    name = LOG_FILE if process_index == 0 else f"flaxft.process_{process_index}.log"
    return Path(workdir) / name


@contextlib.contextmanager
def logs_to_file(path: Path, settle_s: float = 0.2) -> Iterator[None]:
    """While the block runs, everything written to stderr (fd 2: Python logging and
    `warnings` from Orbax, JAX and transformers, XLA's and TensorStore's native threads)
    goes to `path` instead of the console, and an exception that ends the block is written
    there with its traceback; the console keeps stdout (flaxft's own lines) and, after the
    block, the entry point's one-line error. A log that cannot be written (a full disk)
    is given up silently. stderr is restored afterwards; after a failure only once the
    background threads that report it had `settle_s` to do so."""
    sys.stderr.flush()
    console = os.dup(2)
    log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False
    logging.captureWarnings(True)
    try:
        yield
    except BaseException:
        logging.getLogger("flaxft").exception("the run stopped")
        time.sleep(settle_s)
        raise
    finally:
        logging.captureWarnings(False)
        logging.raiseExceptions = raise_exceptions
        sys.stderr.flush()
        os.dup2(console, 2)
        os.close(console)
        os.close(log)
