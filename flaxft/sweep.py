"""Grids of fine-tuning runs from one config, with result tables and a plot.

    python -m flaxft.sweep --config configs/sweep_demo.py:CHECKPOINT --workdir runs/sweep_demo

The sweep file's `get_config()` (or `get_config(ARG)` for `--config FILE.py:ARG`) returns
a plain dict:

    base       a fine-tuning config file (FILE.py or FILE.py:ARG), as --config takes it
    overrides  {dotted config key: value} for every run, e.g. {"init_from": "runs/bert"}
    tasks      {task name: {dotted config key: value}}: each task's data, fields, length
    grid       {dotted config key: [values]}: every task runs the product of these lists
    metric     optional: the metric that picks the best setting, for every task (a name)
               or per task ({task: name}); by default the first reported of PRIMARY_METRICS

A run's config is `base`, then `overrides`, then its task's keys, then its grid values,
set exactly as `--config.KEY=VALUE` flags would set them (so `num_train_steps` set here
replaces the base file's `task.epochs` and the other way round, as on the command line).
Every run's config is built and validated before the first run starts, and the paths and
datasets they read are checked: an unknown key, a grid value that is not a list, a value
of the wrong type, a missing base file, task file or Hugging Face dataset exits 2 with
one line naming it, and nothing is run.

DIR (--workdir) holds:

    runs/TASK/SETTING/      each run's ordinary flaxft workdir; SETTING names the grid
                            values ("learning_rate=3e-05,seed=1", "default" for no grid)
    logs/TASK/SETTING.log   the run's console output (each attempt starts with its command)
    logs/TASK/SETTING.json  its last attempt: command, exit code, one-line error, seconds
    sweep.json              the sweep file's dict and the runs it plans
    results.csv             task, one column per grid key, metric, value, workdir: one row
                            per finished run and metric (without the eval_ prefix), and one
                            row with metric "error" and the one-line error per failed run
    results.md              per task and setting (grid values but the seed): the mean and
                            sample standard deviation over seeds of every metric, the best
                            setting in bold; the runs that failed, with their errors
    results.png             per task, the chosen metric of every run, mean and std per setting

Rerunning the command skips finished runs (their workdir holds the checkpoint of the last
step and that step's evaluation; they are not started again, nor their files touched),
resumes unfinished ones from their newest checkpoint and retries failed ones. A run that
fails (exit 1 or 2, or a crash) is recorded with its one-line error and the sweep goes
on; the sweep then exits 1, after every run. Ctrl-C finishes the current run's step,
saves it and stops the sweep (exit 130; a second Ctrl-C stops the run at once); SIGTERM
does the same and exits 0. One sweep at a time holds DIR (its lock file, as a workdir's).

Runs go one after another, each in its own `python -m flaxft.main` process, using every
device of this machine (the run's mesh keys decide how): a sweep never starts runs side
by side, nor multi-process runs; on a pod or cluster, launch runs with `launch/` instead.

Why a process per run, and not `train.run` in this process: a long grid (GLUE: 9 tasks x
3 learning rates x 3 seeds) would otherwise keep every run's compiled executables, jit
caches and host allocations alive to the end, and an accelerator's memory is returned
whole only when its process ends; a run that dies hard (out of memory, a crash in native
code, an `os._exit` on bad input) would take the sweep with it; and the run's own
handling of Ctrl-C, SIGTERM, its lock and its exit codes (0 / 1 / 2 / 130) works
unchanged, because each run is exactly the command a user would type (shown in its log).
The cost is a few seconds of start-up per run (imports, the run's compilation), small
next to a real fine-tuning run. A run's process dies with the sweep (Linux's
PR_SET_PDEATHSIG), so a killed sweep leaves no run training on its own.
"""

import csv
import dataclasses
import datetime
import difflib
import hashlib
import importlib.machinery
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flaxft import cli

cli.set_offline_defaults()

from absl import flags  # noqa: E402

from flaxft import files, report  # noqa: E402
from flaxft import workdir as workdir_lib  # noqa: E402
from flaxft.errors import EXIT_RUN_FAILED, InputError, fail  # noqa: E402

_CONFIG = flags.DEFINE_string(
    "config", None, "The sweep file (FILE.py, or FILE.py:ARG to call its get_config(ARG)); its get_config() "
    "returns a dict with base, overrides, tasks, grid (and optionally metric).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where runs/, logs/ and results.csv, results.md, results.png go.")

SWEEP_KEYS = ("base", "overrides", "tasks", "grid", "metric")
SEED_KEY = "seed"  # the grid key averaged over in results.md
RUNS, LOGS = "runs", "logs"
SWEEP_FILE, RESULTS_CSV, RESULTS_MD, RESULTS_PLOT = "sweep.json", "results.csv", "results.md", "results.png"
# The metric that picks a task's best setting, unless the sweep names one: the first of
# these the task reports (GLUE's score for each task: MRPC/QQP/STS-B combine two).
PRIMARY_METRICS = ("combined_score", "matthews_correlation", "f1", "accuracy", "pearson", "spearmanr", "exact_match")
_TASK_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")
_PATH_KEYS = ("init_from", "data.tokenizer", "task.train_file", "task.validation_file")
EXIT_INTERRUPTED = 130


# ----------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One planned run: its task, its grid values and the settings that make its config."""

    task: str
    values: dict[str, Any]  # grid key -> value
    name: str  # "TASK/SETTING": the folder under runs/ and logs/
    settings: dict[str, Any]  # every dotted key the sweep sets -> value (overrides, task, grid)
    sources: dict[str, str]  # each of those keys -> where the sweep set it ("overrides", "tasks.T", "grid.K")
    config: Any  # the validated ml_collections.ConfigDict the run will train with

    def flags(self) -> list[str]:
        return [f"--config.{key}={_flag_text(value)}" for key, value in self.settings.items()]


@dataclasses.dataclass(frozen=True)
class Sweep:
    base: str
    grid_keys: tuple[str, ...]
    runs: list[SweepRun]
    metric: dict[str, str]  # task -> metric name chosen by the sweep file (else the default)
    source: dict  # the sweep file's dict, for sweep.json


def load_sweep_file(spec: str) -> dict:
    """The dict that the sweep file's get_config() (or get_config(ARG) for FILE.py:ARG) returns."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such sweep file")
    try:
        loader = importlib.machinery.SourceFileLoader("flaxft_sweep_file", path)
        module = types.ModuleType(loader.name)
        loader.exec_module(module)
        sweep = module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # noqa: BLE001 -- any failure of the user's file is bad input
        raise InputError(f"{spec}: get_config() failed: {type(e).__name__}: {e}") from e
    if not isinstance(sweep, dict):
        raise InputError(f"{spec}: get_config() must return a dict with {', '.join(SWEEP_KEYS[:4])}, "
                         f"got {type(sweep).__name__}")
    return sweep


def plan(sweep: dict) -> Sweep:
    """Checks a sweep file's dict and builds and validates every run's config, in order
    (tasks as listed, then the product of the grid's lists, the last key varying fastest).
    Raises InputError naming the sweep key, config key or run at fault."""
    unknown = [key for key in sweep if key not in SWEEP_KEYS]
    if unknown:
        raise InputError(f"unknown sweep key {unknown[0]!r}; a sweep is a dict with keys {', '.join(SWEEP_KEYS)}")
    base = sweep.get("base")
    if not isinstance(base, str) or not base:
        raise InputError("base: missing; name the fine-tuning config file the runs start from, "
                         "e.g. 'configs/finetune_classification.py'")
    if not os.path.isfile(base.split(":")[0]):
        raise InputError(f"base: {base!r}: no such config file")
    overrides = _settings(sweep.get("overrides", {}), "overrides")
    tasks = sweep.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise InputError("tasks: must be a dict of task name -> {dotted config key: value}, with at least one task")
    task_settings = {}
    for task, settings in tasks.items():
        if not isinstance(task, str) or not _TASK_NAME.fullmatch(task):
            raise InputError(f"tasks: {task!r} cannot name a folder; use letters, digits and . _ + -")
        task_settings[task] = _settings(settings, f"tasks.{task}")
    grid = sweep.get("grid", {})
    if not isinstance(grid, dict):
        raise InputError(f"grid: must be a dict of dotted config key -> list of values, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(key, str):
            raise InputError(f"grid: key {key!r} is not a dotted config key (a string)")
        if not isinstance(values, (list, tuple)):
            raise InputError(f"grid.{key} must be a list of values, got {values!r}")
        if not values:
            raise InputError(f"grid.{key} has no values")
    metric = _metric_choice(sweep.get("metric"), tasks)

    base_config = _parse_config(base, {}, {})
    for where, settings in [("overrides", overrides), *((f"tasks.{t}", s) for t, s in task_settings.items()),
                            *((f"grid.{key}", {key: None}) for key in grid)]:
        for key in settings:
            _check_key(base_config, key, where)
    parts = {key: _name_parts(key, values) for key, values in grid.items()}

    from flaxft import config as config_lib

    runs = []
    for task, settings in task_settings.items():
        for indices in itertools.product(*(range(len(values)) for values in grid.values())):
            values = {key: grid[key][i] for key, i in zip(grid, indices)}
            name = f"{task}/" + (",".join(f"{key}={parts[key][i]}" for key, i in zip(grid, indices)) or "default")
            merged = {**overrides, **settings, **values}
            sources = {**dict.fromkeys(overrides, "overrides"), **dict.fromkeys(settings, f"tasks.{task}"),
                       **{key: f"grid.{key}" for key in values}}
            config = _parse_config(base, merged, sources)
            cli.give_way_to_overrides(config, merged)
            try:
                config_lib.validate(config)
            except InputError as e:
                raise InputError(f"{RUNS}/{name}: {e}") from None
            runs.append(SweepRun(task, values, name, merged, sources, config))
    return Sweep(base, tuple(grid), runs, metric, sweep)


def check_inputs(sweep: Sweep) -> None:
    """InputError naming the first path a run reads that does not exist (init_from,
    data.tokenizer, task files), or Hugging Face dataset that does not load (offline:
    one not in the cache), before anything runs."""
    for run in sweep.runs:
        for key in _PATH_KEYS:
            path = _get(run.config, key)
            if path and not Path(path).expanduser().exists():
                raise InputError(f"{run.sources.get(key, 'base')}: {key} {path!r} does not exist")
    checked = set()
    for run in sweep.runs:
        task = run.config.task
        if not task.dataset or (task.train_file and task.validation_file) or task.dataset in checked:
            continue
        checked.add(task.dataset)
        if Path(task.dataset).expanduser().is_dir():
            continue  # a save_to_disk folder: the run reads it
        try:
            _load_dataset(task.dataset)
        except InputError as e:
            raise InputError(f"tasks.{run.task}: {e}") from None


def _load_dataset(spec: str) -> None:
    import datasets

    from flaxft.data.hub import load_named

    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()  # "using the latest cached version" for every dataset
    try:
        load_named(spec, "task.dataset")
    finally:
        datasets.logging.set_verbosity(verbosity)


def _settings(settings: Any, where: str) -> dict[str, Any]:
    if not isinstance(settings, dict):
        raise InputError(f"{where}: must be a dict of dotted config key -> value, got {settings!r}")
    for key in settings:
        if not isinstance(key, str):
            raise InputError(f"{where}: key {key!r} is not a dotted config key (a string)")
    return dict(settings)


def _metric_choice(metric: Any, tasks: dict) -> dict[str, str]:
    if metric is None:
        return {}
    if isinstance(metric, str) and metric:
        return dict.fromkeys(tasks, metric)
    if isinstance(metric, dict):
        for task, name in metric.items():
            if task not in tasks:
                raise InputError(f"metric: {task!r} is not one of the tasks ({', '.join(tasks)})")
            if not isinstance(name, str) or not name:
                raise InputError(f"metric.{task} must be a metric name, got {name!r}")
        return dict(metric)
    raise InputError(f"metric: must be a metric name or a dict of task -> metric name, got {metric!r}")


def _dotted_keys(config, prefix: str = "") -> list[str]:
    import ml_collections

    keys = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _check_key(config, key: str, where: str) -> None:
    import ml_collections

    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = difflib.get_close_matches(key, _dotted_keys(config), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else " (flaxft/config.py lists every key)"
            raise InputError(f"{where}: {key!r} is not a config key{hint}")
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise InputError(f"{where}: {key!r} is a group of keys; set its keys ({key}.KEY) one by one")


def _get(config, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _flag_text(value) -> str:
    """`value` as the text of a --config.KEY=TEXT flag (ml-collections parses it by the key's type)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return repr(tuple(value))
    return value if isinstance(value, str) else repr(value)


def _parse_config(base: str, settings: dict[str, Any], sources: dict[str, str]):
    """The config `python -m flaxft.main --config BASE --config.KEY=VALUE ...` builds from
    `settings` (parsed by the same ml-collections flag parser); InputError naming the
    source of a value that its key's type cannot take."""
    from ml_collections import config_flags

    def parse(items: dict[str, Any]):
        argv = ["flaxft.main", "--config", base, *(f"--config.{k}={_flag_text(v)}" for k, v in items.items())]
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
        values(argv)
        return values["config"].value

    try:
        config = parse(settings)
    except Exception as e:  # noqa: BLE001 -- find the value at fault, one at a time
        for key, value in settings.items():
            try:
                parse({key: value})
            except Exception as one:  # noqa: BLE001
                raise InputError(f"{sources[key]}: {key}={value!r} does not fit config.{key}: "
                                 f"{cli._readable(one)}") from None
        raise InputError(f"base: {base!r} cannot be loaded: {type(e).__name__}: {cli._readable(e)}") from None
    for key, value in settings.items():
        parsed = _get(config, key)
        wanted = tuple(value) if isinstance(value, list) else value
        if parsed != wanted or isinstance(parsed, str) != isinstance(wanted, str):
            raise InputError(f"{sources[key]}: {key}={value!r} does not fit config.{key}, which holds a "
                             f"{type(parsed).__name__} (the command line would make it {parsed!r})")
    return config


def _name_parts(key: str, values: Sequence) -> list[str]:
    """How each of a grid key's values appears in run folder names: its text, or (a path,
    odd characters, long) a safe shortening with a hash of the value. InputError when two
    values would name the same folder."""
    parts = []
    for value in values:
        text = str(value)
        safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[-40:]
        if safe != text or not safe:
            safe = f"{safe}_{hashlib.sha1(repr(value).encode()).hexdigest()[:6]}".lstrip("_")
        parts.append(safe)
    for i, part in enumerate(parts):
        j = parts.index(part)
        if j != i:
            same = "is listed twice" if values[i] == values[j] else f"and {values[i]!r} would name the same run folder"
            raise InputError(f"grid.{key}: {values[j]!r} {same}")
    return parts


# ----------------------------------------------------------------------------- running


_CHILD = """\
import ctypes, os, signal, sys
try:  # PR_SET_PDEATHSIG: the run dies with the sweep
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    os._exit(137)  # the sweep died before prctl
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class _Stop:
    """While active, Ctrl-C and SIGTERM stop the sweep after the current run: each signal is
    passed on to the run's process (which finishes its step, saves and exits)."""

    def __init__(self):
        self.signum: int | None = None
        self.child: subprocess.Popen | None = None
        self._previous = {}

    def __enter__(self) -> "_Stop":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _on_signal(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = self.signum or signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)
        elif first:
            os.write(1, b"\nstopping: no run is in progress\n")

    def start(self, command: list[str], log) -> subprocess.Popen:
        env = dict(os.environ)
        checkout = Path(__file__).resolve().parents[1]
        if (checkout / "pyproject.toml").is_file():  # run from a source tree: the run imports the same flaxft
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(checkout), env.get("PYTHONPATH")) if p)
        self.child = subprocess.Popen([sys.executable, "-c", _CHILD, str(os.getpid()), *command[1:]],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      process_group=0)  # Ctrl-C reaches the run once, through _on_signal
        if self.signum is not None:
            self.child.send_signal(self.signum)
        return self.child


def run_command(sweep: Sweep, run: SweepRun, root: Path) -> list[str]:
    """The `python -m flaxft.main` command of `run` (in the sweep's working directory)."""
    return [sys.executable, "-m", "flaxft.main", "--config", sweep.base, "--workdir", str(root / RUNS / run.name),
            *run.flags()]


def finished_metrics(workdir: Path) -> dict[str, float] | None:
    """The evaluation of the last step (metric -> value, eval_ prefix dropped) when
    `workdir` finished: its config's num_train_steps is checkpointed and evaluated; else None."""
    try:
        steps = json.loads((workdir / report.CONFIG_FILE).read_text())["num_train_steps"]
        records = report.read_metrics(workdir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(steps, int) or steps < 1 or not (workdir / files.CHECKPOINTS / str(steps)).is_dir():
        return None
    scores = {}
    for record in records:
        if record.get("step") == steps:
            scores.update({k[len("eval_"):]: v for k, v in record.items() if k.startswith("eval_")})
    return scores or None


def _record_path(root: Path, run: SweepRun) -> Path:
    return root / LOGS / f"{run.name}.json"


def _read_record(root: Path, run: SweepRun) -> dict:
    try:
        record = json.loads(_record_path(root, run).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(root: Path, run: SweepRun, record: dict) -> None:
    files.write_text_atomically(_record_path(root, run), json.dumps(record, indent=2) + "\n")


def _error_line(log_path: Path, offset: int, code: int) -> str:
    """The one-line error an attempt ended with: its `error: ...` line, else how it ended."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    errors = [line[len("error:"):].strip() for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1]
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    return f"{how}: {lines[-1][:300]}" if lines else how


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def run_sweep(sweep: Sweep, root: Path) -> int:
    """Runs every unfinished run of `sweep` in `root`, one after another, writing the
    results after each; returns the exit code (0, 1 when a run failed, 130 after Ctrl-C)."""
    try:
        workdir_lib.check(root)
        lock = workdir_lib.Lock(root)
        lock.acquire()
    except InputError as e:
        fail(str(e))
    try:
        files.write_text_atomically(root / SWEEP_FILE, json.dumps(
            {**sweep.source, "runs": [run.name for run in sweep.runs]}, indent=2, default=repr) + "\n")
        with _Stop() as stop:
            _run_all(sweep, root, stop)
        outcomes = write_results(sweep, root, plot=True)
    finally:
        lock.release()
    failed = [o for o in outcomes if o.status == "failed"]
    done = sum(o.status == "finished" for o in outcomes)
    if stop.signum is not None:
        why = "interrupted" if stop.signum == signal.SIGINT else "stopped (SIGTERM)"
        print(f"{why}: {done} of {len(outcomes)} runs finished; results so far in {root / RESULTS_MD}; "
              "the same command resumes", flush=True)
        return EXIT_INTERRUPTED if stop.signum == signal.SIGINT else 0
    if failed:
        first = failed[0]
        fail(f"{len(failed)} of {len(outcomes)} runs failed ({RUNS}/{first.run.name}: {first.error}); "
             f"results and errors in {root / RESULTS_MD}", EXIT_RUN_FAILED)
    print(f"done: {len(outcomes)} runs; results in {root / RESULTS_MD}, {root / RESULTS_CSV}, {root / RESULTS_PLOT}",
          flush=True)
    return 0


def _run_all(sweep: Sweep, root: Path, stop: _Stop) -> None:
    total = len(sweep.runs)
    for index, run in enumerate(sweep.runs, 1):
        if stop.signum is not None:
            return
        head = f"[{index}/{total}] {RUNS}/{run.name}"
        workdir = root / RUNS / run.name
        command = run_command(sweep, run, root)
        metrics = finished_metrics(workdir)
        if metrics is not None:
            before = _read_record(root, run).get("command")
            note = ""
            if before is not None and before != command:
                note = " (with another command than this sweep's now: delete its folder to run it again)"
            print(f"{head}: finished earlier{note}: {_summary(sweep, run, metrics)}", flush=True)
            continue
        log_path = root / LOGS / f"{run.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        resuming = any(p.name.isdigit() for p in (workdir / files.CHECKPOINTS).glob("*"))
        print(f"{head}: {'resuming' if resuming else 'starting'} (log {log_path})", flush=True)
        started = time.monotonic()
        record = {"command": command, "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                  "exit": None, "error": None, "seconds": None}
        _write_record(root, run, record)
        with open(log_path, "ab") as log:
            offset = log.tell()
            log.write(f"$ {shlex.join(command)}\n".encode())
            log.flush()
            code = stop.start(command, log).wait()
        stop.child = None
        seconds = time.monotonic() - started
        metrics = finished_metrics(workdir)
        record.update({"exit": code, "seconds": round(seconds, 1)})
        if metrics is not None:
            print(f"{head}: done in {_clock(seconds)}: {_summary(sweep, run, metrics)}", flush=True)
        elif stop.signum is not None:
            print(f"{head}: stopped after {_clock(seconds)} (exit {code}); the same command resumes it", flush=True)
        else:
            record["error"] = _error_line(log_path, offset, code) if code else \
                "the run ended without evaluating its last step"
            print(f"{head}: failed after {_clock(seconds)}: {record['error']}", flush=True)
        _write_record(root, run, record)
        write_results(sweep, root)


def _summary(sweep: Sweep, run: SweepRun, metrics: dict) -> str:
    name = primary_metric(sweep.metric.get(run.task), metrics)
    shown = [name] if name else sorted(metrics)[:3]
    return "  ".join(f"{k} {_number(metrics[k])}" for k in shown)


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class Outcome:
    run: SweepRun
    status: str  # "finished", "failed" or "pending"
    metrics: dict[str, Any]
    error: str = ""


def outcomes_of(sweep: Sweep, root: Path) -> list[Outcome]:
    """Each run's state, read from its workdir and its last attempt's record."""
    outcomes = []
    for run in sweep.runs:
        metrics = finished_metrics(root / RUNS / run.name)
        if metrics is not None:
            outcomes.append(Outcome(run, "finished", metrics))
            continue
        error = _read_record(root, run).get("error")
        outcomes.append(Outcome(run, "failed", {}, error) if error else Outcome(run, "pending", {}))
    return outcomes


def primary_metric(chosen: str | None, names) -> str | None:
    """The metric that ranks settings: `chosen` when given, else the first of
    PRIMARY_METRICS among `names`, else the first of `names` (sorted)."""
    if chosen:
        return chosen if chosen in names else None
    return next((m for m in PRIMARY_METRICS if m in names), min(names, default=None))


def higher_is_better(metric: str) -> bool:
    return not (metric.endswith("loss") or metric in ("mse", "mae", "rmse", "perplexity"))


def _value_text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def results_csv(sweep: Sweep, outcomes: Sequence[Outcome], root: Path) -> str:
    """results.csv: task, the grid keys, metric, value, workdir."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["task", *sweep.grid_keys, "metric", "value", "workdir"])
    for o in outcomes:
        head = [o.run.task, *(_value_text(o.run.values[k]) for k in sweep.grid_keys)]
        workdir = str(root / RUNS / o.run.name)
        if o.status == "finished":
            for metric in sorted(o.metrics):
                writer.writerow([*head, metric, _value_text(o.metrics[metric]), workdir])
        elif o.status == "failed":
            writer.writerow([*head, "error", o.error, workdir])
    return out.getvalue()


@dataclasses.dataclass
class _Group:
    """The runs of one task and setting (grid values but the seed)."""

    setting: tuple
    outcomes: list[Outcome]

    def values(self, metric: str) -> list[float]:
        return [float(o.metrics[metric]) for o in self.outcomes
                if o.status == "finished" and isinstance(o.metrics.get(metric), (int, float))]

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return statistics.fmean(values) if values else None


def _groups(sweep: Sweep, outcomes: Sequence[Outcome], task: str) -> list[_Group]:
    keys = [k for k in sweep.grid_keys if k != SEED_KEY]
    groups: dict[tuple, _Group] = {}
    for o in outcomes:
        if o.run.task == task:
            setting = tuple(o.run.values[k] for k in keys)
            groups.setdefault(setting, _Group(setting, [])).outcomes.append(o)
    return list(groups.values())


def _best(groups: list[_Group], metric: str | None) -> _Group | None:
    scored = [(g.mean(metric), g) for g in groups if metric and g.mean(metric) is not None]
    if not scored:
        return None
    pick = max if higher_is_better(metric) else min
    return pick(scored, key=lambda pair: pair[0])[1]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    digits = 4 if abs(mean) < 10 else 2
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _task_metric(sweep: Sweep, outcomes: Sequence[Outcome], task: str) -> tuple[str | None, list[str]]:
    names = sorted({m for o in outcomes if o.run.task == task for m in o.metrics})
    return primary_metric(sweep.metric.get(task), names), names


def results_markdown(sweep: Sweep, outcomes: Sequence[Outcome], root: Path) -> str:
    """results.md: the best setting per task, then per task a table of every setting's
    mean ± sample std over seeds (the best in bold), then the failed runs."""
    keys = [k for k in sweep.grid_keys if k != SEED_KEY]
    count = {s: sum(o.status == s for o in outcomes) for s in ("finished", "failed", "pending")}
    lines = [f"# Sweep results: {root}", "",
             f"`{sweep.base}`, {len(outcomes)} runs: {count['finished']} finished, {count['failed']} failed, "
             f"{count['pending']} not finished. Each cell is the mean ± sample standard deviation over the "
             f"finished seeds (n); the best setting of each task, by its first metric, is in bold.", "",
             "| task | metric | best setting | mean ± std | n |", "|---|---|---|---|---|"]
    sections = []
    for task in dict.fromkeys(o.run.task for o in outcomes):
        groups = _groups(sweep, outcomes, task)
        metric, names = _task_metric(sweep, outcomes, task)
        best = _best(groups, metric)
        if best is None:
            lines.append(f"| {task} | {metric or sweep.metric.get(task, '-')} | - | - | 0 |")
        else:
            lines.append(f"| {task} | {metric} | {_setting_text(keys, best.setting)} | "
                         f"{_mean_std(best.values(metric))} | {len(best.values(metric))} |")
        columns = ([metric] if metric else []) + [m for m in names if m != metric]
        sections += ["", f"## {task}", ""]
        if not columns:
            failures = sum(o.status == "failed" for o in outcomes if o.run.task == task)
            sections.append(f"No finished runs{f' ({failures} failed, below)' if failures else ' yet'}.")
            continue
        if metric is None:
            sections += [f"The chosen metric {sweep.metric[task]!r} is not among those reported.", ""]
        sections += ["| " + " | ".join([*(keys or ["setting"]), *columns, "n"]) + " |",
                     "|" + "---|" * (len(keys or ["setting"]) + len(columns) + 1)]
        for group in groups:
            cells = [_value_text(v) for v in group.setting] or ["all"]
            cells += [_mean_std(group.values(m)) for m in columns]
            cells.append(str(sum(o.status == "finished" for o in group.outcomes)))
            if group is best:
                cells = [f"**{c}**" for c in cells]
            sections.append("| " + " | ".join(cells) + " |")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        sections += ["", "## Failed runs", "", "| run | error |", "|---|---|"]
        sections += [f"| {RUNS}/{o.run.name} | {o.error.replace('|', '/')} |" for o in failed]
    return "\n".join(lines + sections) + "\n"


def _setting_text(keys: Sequence[str], setting: tuple) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in zip(keys, setting)) or "all"


def plot_results(sweep: Sweep, outcomes: Sequence[Outcome], path: Path) -> Path | None:
    """results.png: per task, its metric for every finished run (dots) and each setting's
    mean ± std (the best setting in red). None when nothing has finished."""
    keys = [k for k in sweep.grid_keys if k != SEED_KEY]
    panels = []
    for task in dict.fromkeys(o.run.task for o in outcomes):
        metric, _ = _task_metric(sweep, outcomes, task)
        groups = [g for g in _groups(sweep, outcomes, task) if metric and g.values(metric)]
        if groups:
            panels.append((task, metric, groups, _best(groups, metric)))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.4 * rows), squeeze=False)
    for ax, (task, metric, groups, best) in zip(axes.flat, panels):
        for x, group in enumerate(groups):
            values = group.values(metric)
            ax.plot([x] * len(values), values, ".", color="0.6")
            ax.errorbar(x, statistics.fmean(values), yerr=statistics.stdev(values) if len(values) > 1 else 0.0,
                        fmt="o", capsize=4, color="C3" if group is best else "C0")
        labels = [", ".join(_value_text(v) for v in g.setting) or "all" for g in groups]
        ax.set_xticks(range(len(groups)), labels, rotation=30 if len(groups) > 3 else 0, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_title(task)
        ax.set_ylabel(metric)
        if keys:
            ax.set_xlabel(", ".join(keys), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    with files.replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def write_results(sweep: Sweep, root: Path, plot: bool = False) -> list[Outcome]:
    """results.csv and results.md (and with `plot`, results.png) from the runs' workdirs."""
    outcomes = outcomes_of(sweep, root)
    files.write_text_atomically(root / RESULTS_CSV, results_csv(sweep, outcomes, root))
    files.write_text_atomically(root / RESULTS_MD, results_markdown(sweep, outcomes, root))
    if plot:
        plot_results(sweep, outcomes, root / RESULTS_PLOT)
    return outcomes


# ----------------------------------------------------------------------------- command line


def main() -> None:
    if any(arg in cli.HELP_FLAGS for arg in sys.argv[1:]):
        print(cli.usage(__doc__))
        sys.exit(0)
    try:
        argv = flags.FLAGS(sys.argv)
    except Exception as e:  # noqa: BLE001 -- unknown flags, bad values
        fail(f"bad command line: {cli._readable(e)}")
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _CONFIG.value:
        fail("--config is required (e.g. --config configs/sweep_demo.py:CHECKPOINT)")
    if not _WORKDIR.value:
        fail("--workdir is required")
    try:
        sweep = plan(load_sweep_file(_CONFIG.value))
        check_inputs(sweep)
    except InputError as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted before any run started", EXIT_INTERRUPTED)
    sys.exit(run_sweep(sweep, Path(_WORKDIR.value)))


if __name__ == "__main__":
    main()
