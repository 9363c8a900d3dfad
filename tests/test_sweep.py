"""python -m flaxft.sweep: planning and its one-line errors, the result tables, the
published sweep files, and (slow) real sweeps of tiny runs: results of 2 tasks x 2 seeds
with a failing task, a SIGKILL mid-sweep finished by a rerun that leaves finished runs
alone, and Ctrl-C."""

import csv
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flaxft import sweep as sweep_lib
from flaxft.errors import InputError

REPO = Path(__file__).resolve().parents[1]
BASE = str(REPO / "configs" / "finetune_classification.py")
TINY = {"model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
        "model.intermediate_size": 64, "num_train_steps": 4, "global_batch_size": 16, "seq_len": 32,
        "warmup_steps": 1, "log_every_steps": 2, "eval_every_steps": 1000, "checkpoint_every_steps": 1000}


def task_files(folder: Path, name: str, labels: list[str], validation_labels: list[str] | None = None) -> dict:
    """A small classification task: 48 training and 16 validation rows of made-up text."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    files = {}
    for split, rows in (("train", 48), ("validation", 16)):
        path = folder / f"{name}_{split}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i in range(rows):
                label_set = validation_labels if split == "validation" and validation_labels else labels
                writer.writerow([" ".join(words[(i * k) % 8] for k in range(1, 9)), label_set[i % len(label_set)]])
        files[f"task.{split}_file"] = str(path)
    return files


def a_sweep(folder: Path, tokenizer: str = "unused", **changes) -> dict:
    """Two tasks x two seeds of tiny runs from scratch (`tokenizer` as data.tokenizer)."""
    sweep = {
        "base": BASE,
        "overrides": {**TINY, "data.tokenizer": tokenizer},
        "tasks": {"a": task_files(folder, "a", ["x", "y"]), "b": task_files(folder, "b", ["p", "q", "r"])},
        "grid": {"learning_rate": [1e-3], "seed": [0, 1]},
    }
    return {**sweep, **changes}


def write_sweep(path: Path, sweep: dict) -> Path:
    path.write_text(f"def get_config():\n    return {sweep!r}\n")
    return path


def sweep_command(sweep_file: Path, workdir: Path) -> list[str]:
    return [sys.executable, "-m", "flaxft.sweep", "--config", str(sweep_file), "--workdir", str(workdir)]


# The sweep's runs train on one CPU device, not the 8 simulated ones of the other tests:
# the sweep does not care, and each run compiles twice as fast.
ONE_DEVICE = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "").replace(
    "--xla_force_host_platform_device_count=8", "").strip()}


def run_sweep(sweep_file: Path, workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(sweep_file, workdir), cwd=REPO, capture_output=True, text=True,
                          env=ONE_DEVICE, timeout=600)


def start_sweep(sweep_file: Path, workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(sweep_command(sweep_file, workdir), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ONE_DEVICE)


# ----------------------------------------------------------------------------- planning


def test_help():
    result = subprocess.run([sys.executable, "-m", "flaxft.sweep", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    for text in ("--config", "--workdir", "results.csv", "one after another"):
        assert text in result.stdout, text


def test_plan_names_runs_by_task_and_grid_values_and_sets_them_as_flags(tmp_path):
    sweep = a_sweep(tmp_path, grid={"learning_rate": [3e-5, 1e-4], "seed": [0, 1]},
                    tasks={"a": {"task.train_file": "t.csv", "task.validation_file": "v.csv", "seed": 7}})
    planned = sweep_lib.plan(sweep)
    assert [r.name for r in planned.runs] == ["a/learning_rate=3e-05,seed=0", "a/learning_rate=3e-05,seed=1",
                                              "a/learning_rate=0.0001,seed=0", "a/learning_rate=0.0001,seed=1"]
    run = planned.runs[1]
    assert (run.config.learning_rate, run.config.seed, run.config.task.train_file) == (3e-5, 1, "t.csv")
    assert "--config.seed=1" in run.flags() and "--config.seed=7" not in run.flags()  # the grid wins
    # The base file's task.epochs gives way to num_train_steps, as on the command line.
    assert (run.config.num_train_steps, run.config.task.epochs) == (4, 0.0)
    command = sweep_lib.run_command(planned, run, tmp_path)
    assert command[1:7] == ["-m", "flaxft.main", "--config", BASE, "--workdir", str(tmp_path / "runs" / run.name)]


def test_odd_grid_values_name_folders_safely_and_no_grid_is_one_run_per_task(tmp_path):
    parts = sweep_lib._name_parts("init_from", ["/ckpt/a/model", "/ckpt/b/model", "plain"])
    assert parts[2] == "plain" and all("/" not in p for p in parts) and len(set(parts)) == 3
    assert parts == sweep_lib._name_parts("init_from", ["/ckpt/a/model", "/ckpt/b/model", "plain"])
    planned = sweep_lib.plan(a_sweep(tmp_path, grid={}))
    assert [r.name for r in planned.runs] == ["a/default", "b/default"]


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown sweep key 'bogus'"),
    ({"base": None}, "base: missing"),
    ({"base": "configs/no_such_file.py"}, "base: 'configs/no_such_file.py': no such config file"),
    ({"grid": {"seed": 0}}, "grid.seed must be a list of values, got 0"),
    ({"grid": {"seed": []}}, "grid.seed has no values"),
    ({"grid": {"seed": [0, 0]}}, "grid.seed: 0 is listed twice"),
    ({"grid": {"learnin_rate": [1e-3]}}, "grid.learnin_rate: 'learnin_rate' is not a config key; "
                                         "did you mean 'learning_rate'?"),
    ({"grid": {"learning_rate": ["fast"]}}, "grid.learning_rate: learning_rate='fast' does not fit"),
    ({"overrides": {"model.hiden_size": 8}}, "overrides: 'model.hiden_size' is not a config key"),
    ({"overrides": {"model": 8}}, "overrides: 'model' is a group of keys"),
    ({"overrides": {"qlora.bits": 4}}, "overrides: 'qlora.bits' is not a config key"),
    ({"tasks": {"a": {"task.datset": "glue:cola"}}}, "tasks.a: 'task.datset' is not a config key"),
    ({"tasks": {"a": {"task.text_fields": 5}}}, "tasks.a: task.text_fields=5 does not fit config.task.text_fields"),
    ({"tasks": {"a/b": {}}}, "tasks: 'a/b' cannot name a folder"),
    ({"tasks": {}}, "tasks: must be a dict"),
    ({"metric": {"c": "f1"}}, "metric: 'c' is not one of the tasks"),
    ({"overrides": {**TINY, "task.epochs": 1.0}},
     "runs/a/learning_rate=0.001,seed=0: config.num_train_steps (4) and config.task.epochs (1.0) are both set"),
])
def test_bad_sweeps_name_the_key(tmp_path, change, message):
    sweep = a_sweep(tmp_path, **change)
    if sweep["base"] is None:
        del sweep["base"]
    with pytest.raises(InputError, match="^" + re.escape(message)):
        sweep_lib.plan(sweep)


@pytest.mark.parametrize("key, where", [("init_from", "overrides"), ("task.validation_file", "tasks.b")])
def test_missing_inputs_are_named_before_anything_runs(tmp_path, key, where):
    sweep = a_sweep(tmp_path, str(tmp_path))  # a folder that exists stands for the tokenizer
    (sweep["overrides"] if where == "overrides" else sweep["tasks"]["b"])[key] = str(tmp_path / "gone")
    with pytest.raises(InputError, match=f"^{where}: {key} '{tmp_path / 'gone'}' does not exist"):
        sweep_lib.check_inputs(sweep_lib.plan(sweep))


def test_a_bad_sweep_exits_2_with_one_line_and_writes_nothing(tmp_path):
    sweep_file = write_sweep(tmp_path / "sweep.py", a_sweep(tmp_path, grid={"seed": 0}))
    result = run_sweep(sweep_file, tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: grid.seed must be a list of values, got 0\n" and result.stdout == ""
    assert not (tmp_path / "out").exists()


def test_glue_offline_exits_2_naming_the_dataset_before_running_anything(tmp_path, minilm_dir):
    command = [sys.executable, "-m", "flaxft.sweep", "--workdir", str(tmp_path / "glue")]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*command, "--config", f"configs/sweep_glue.py:{minilm_dir}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tasks.cola: task.dataset 'glue:cola': "), lines
    assert "offline" in lines[0]
    assert not (tmp_path / "glue").exists()
    result = subprocess.run([*command, "--config", "configs/sweep_glue.py"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--config configs/sweep_glue.py:CHECKPOINT" in result.stderr


def test_the_published_sweep_files_plan_valid_runs():
    glue = sweep_lib.plan(sweep_lib.load_sweep_file(f"{REPO}/configs/sweep_glue.py:some/checkpoint"))
    assert len(glue.runs) == 9 * 3 * 3 and glue.grid_keys == ("learning_rate", "seed")
    by_task = {run.task: run.config for run in glue.runs}
    assert list(by_task) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    for task, config in by_task.items():
        assert config.task.dataset == f"glue:{task}" and config.init_from == "some/checkpoint"
        assert (config.task.train_file, config.task.validation_file, config.task.epochs) == ("", "", 3.0)
    from flaxft.tasks.classification import GLUE_TEXT_FIELDS

    assert all(tuple(c.task.text_fields.split(",")) == GLUE_TEXT_FIELDS[t] for t, c in by_task.items())
    demo = sweep_lib.plan(sweep_lib.load_sweep_file(f"{REPO}/configs/sweep_demo.py:some/checkpoint"))
    settings = ["learning_rate=5e-05,seed=0", "learning_rate=5e-05,seed=1", "learning_rate=0.0001,seed=0",
                "learning_rate=0.0001,seed=1"]
    assert [r.name for r in demo.runs] == [f"{task}/{s}" for task in ("classification", "topics") for s in settings]


# ----------------------------------------------------------------------------- results


def fake_finished_run(workdir: Path, steps: int, scores: dict) -> None:
    """A workdir as a finished run leaves it: config.json, the last step's checkpoint and
    evaluation (only what the sweep reads)."""
    (workdir / "checkpoints" / str(steps)).mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"num_train_steps": steps}))
    records = [{"step": steps // 2, "eval_accuracy": 0.0}, {"step": steps, "loss": 0.5},
               {"step": steps, **{f"eval_{k}": v for k, v in scores.items()}}]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_results_tables_mean_and_std_over_seeds_and_the_best_setting_in_bold(tmp_path):
    sweep = a_sweep(tmp_path, grid={"learning_rate": [1e-3, 1e-4], "seed": [0, 1, 2]})
    planned = sweep_lib.plan(sweep)
    root = tmp_path / "out"
    accuracy = {("a", 1e-3): [0.5, 0.6, 0.7], ("a", 1e-4): [0.8, 0.9, None], ("b", 1e-3): [0.3, 0.3, 0.3]}
    for run in planned.runs:
        values = accuracy.get((run.task, run.values["learning_rate"]))
        value = values[run.values["seed"]] if values else None
        if value is not None:
            fake_finished_run(root / "runs" / run.name, 10, {"accuracy": value, "macro_f1": value / 2})
    (root / "runs" / "a/learning_rate=0.0001,seed=2").mkdir(parents=True)  # unfinished: no checkpoint
    failed = next(r for r in planned.runs if r.task == "b" and r.values["learning_rate"] == 1e-4)
    sweep_lib._write_record(root, failed, {"command": [], "exit": 2, "error": "bad | labels"})

    outcomes = sweep_lib.write_results(planned, root, plot=True)
    assert [o.status for o in outcomes].count("finished") == 8
    rows = list(csv.DictReader(io.StringIO((root / "results.csv").read_text())))
    assert list(rows[0]) == ["task", "learning_rate", "seed", "metric", "value", "workdir"]
    assert len(rows) == 8 * 2 + 1
    assert rows[0] == {"task": "a", "learning_rate": "0.001", "seed": "0", "metric": "accuracy", "value": "0.5",
                       "workdir": str(root / "runs" / "a/learning_rate=0.001,seed=0")}
    errors = [r for r in rows if r["metric"] == "error"]
    assert [(e["task"], e["learning_rate"], e["seed"], e["value"]) for e in errors] == [
        ("b", "0.0001", "0", "bad | labels")]

    markdown = (root / "results.md").read_text()
    assert "12 runs: 8 finished, 1 failed, 3 not finished" in markdown
    assert "| a | accuracy | learning_rate=0.0001 | 0.8500 ± 0.0707 | 2 |" in markdown
    assert "| 0.001 | 0.6000 ± 0.1000 | 0.3000 ± 0.0500 | 3 |" in markdown
    assert "| **0.0001** | **0.8500 ± 0.0707** | **0.4250 ± 0.0354** | **2** |" in markdown
    assert f"{statistics.stdev([0.8, 0.9]):.4f}" == "0.0707"
    assert "| runs/b/learning_rate=0.0001,seed=0 | bad / labels |" in markdown
    assert (root / "results.png").stat().st_size > 1000


def test_a_run_is_finished_only_with_its_last_checkpoint_and_evaluation(tmp_path):
    fake_finished_run(tmp_path / "done", 10, {"accuracy": 0.5})
    assert sweep_lib.finished_metrics(tmp_path / "done") == {"accuracy": 0.5}
    fake_finished_run(tmp_path / "saving", 10, {"accuracy": 0.5})
    (tmp_path / "saving" / "checkpoints" / "10").rename(tmp_path / "saving" / "checkpoints" / "10.orbax-checkpoint-tmp")
    assert sweep_lib.finished_metrics(tmp_path / "saving") is None
    assert sweep_lib.finished_metrics(tmp_path / "missing") is None
    assert sweep_lib.primary_metric(None, ["accuracy", "combined_score", "f1"]) == "combined_score"
    assert sweep_lib.primary_metric(None, ["accuracy", "macro_f1"]) == "accuracy"
    assert sweep_lib.primary_metric(None, ["matthews_correlation"]) == "matthews_correlation"
    assert sweep_lib.primary_metric("f1", ["accuracy"]) is None


# ----------------------------------------------------------------------------- real sweeps


def csv_rows(root: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO((root / "results.csv").read_text())))


@pytest.mark.slow
def test_a_sweep_of_two_tasks_and_two_seeds_with_a_failing_task(tmp_path, minilm_dir):
    sweep = a_sweep(tmp_path, str(minilm_dir))
    sweep["tasks"]["broken"] = task_files(tmp_path, "broken", ["x", "y"], validation_labels=["z"])
    root = tmp_path / "out"
    result = run_sweep(write_sweep(tmp_path / "sweep.py", sweep), root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: 2 of 6 runs failed (runs/broken/learning_rate=0.001,seed=0: ")
    assert "'z'" in result.stderr and result.stderr.count("\n") == 1

    rows = csv_rows(root)
    finished = [r for r in rows if r["metric"] != "error"]
    assert sorted({(r["task"], r["seed"]) for r in finished}) == [("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")]
    for row in finished:  # each value is the run's own last evaluation
        scores = json.loads((Path(row["workdir"]) / "eval_results.json").read_text())
        assert float(row["value"]) == scores[f"eval_{row['metric']}"]
        assert row["learning_rate"] == "0.001" and {r["metric"] for r in finished} == {"accuracy", "macro_f1"}
    errors = [r for r in rows if r["metric"] == "error"]
    assert [(r["task"], r["seed"]) for r in errors] == [("broken", "0"), ("broken", "1")]
    assert all("is not one of the training labels" in r["value"] for r in errors)

    markdown = (root / "results.md").read_text()
    for task in ("a", "b"):
        values = [float(r["value"]) for r in finished if r["task"] == task and r["metric"] == "accuracy"]
        cell = sweep_lib._mean_std(values)
        assert cell == f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"
        assert f"| {task} | accuracy | learning_rate=0.001 | {cell} | 2 |" in markdown
    assert "6 runs: 4 finished, 2 failed, 0 not finished" in markdown
    assert (root / "results.png").is_file()
    assert result.stdout.count(": done in ") == 4 and result.stdout.count(": failed after ") == 2


def workdir_snapshot(workdir: Path) -> dict:
    """Every file of a workdir (but its lock) -> (size, mtime_ns)."""
    return {str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in workdir.rglob("*") if p.is_file() and p.name != ".flaxft.lock"}


def wait_until(predicate, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the sweep ended first: {process.stdout.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def checkpoint_steps(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def wait_for_exit(pid: int, timeout: float = 30.0) -> None:
    """Until process `pid` is gone (or a zombie nobody reaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} outlived the sweep")


@pytest.mark.slow
def test_a_sweep_killed_mid_run_finishes_on_rerun_without_redoing_finished_runs(tmp_path, minilm_dir):
    sweep = a_sweep(tmp_path, str(minilm_dir), grid={"seed": [0, 1]})
    sweep["overrides"].update(num_train_steps=200, checkpoint_every_steps=20)
    del sweep["tasks"]["b"]
    sweep_file, root = write_sweep(tmp_path / "sweep.py", sweep), tmp_path / "out"
    first, second = root / "runs" / "a" / "seed=0", root / "runs" / "a" / "seed=1"
    process = start_sweep(sweep_file, root)
    try:
        wait_until(lambda: checkpoint_steps(second), process)
        os.kill(process.pid, signal.SIGKILL)  # a real SIGKILL, in the middle of the second run
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert sweep_lib.finished_metrics(first) is not None and sweep_lib.finished_metrics(second) is None
    assert 0 < checkpoint_steps(second)[-1] < 200
    holder = json.loads((second / ".flaxft.lock").read_text())["pid"]
    wait_for_exit(holder)  # the run died with the sweep (PR_SET_PDEATHSIG)
    before = workdir_snapshot(first)

    result = run_sweep(sweep_file, root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[1/2] runs/a/seed=0: finished earlier: accuracy" in result.stdout
    assert "[2/2] runs/a/seed=1: resuming" in result.stdout
    assert workdir_snapshot(first) == before  # not started again: every file as it was
    assert (root / "logs" / "a" / "seed=0.log").read_text().count("$ ") == 1
    assert "resumed from step" in (root / "logs" / "a" / "seed=1.log").read_text()
    assert sweep_lib.finished_metrics(second) is not None
    assert sorted(r["seed"] for r in csv_rows(root) if r["metric"] == "accuracy") == ["0", "1"]


@pytest.mark.slow
def test_ctrl_c_saves_the_run_and_stops_the_sweep(tmp_path, minilm_dir):
    sweep = a_sweep(tmp_path, str(minilm_dir), grid={"seed": [0, 1]})
    sweep["overrides"].update(num_train_steps=200, checkpoint_every_steps=20)
    del sweep["tasks"]["b"]
    root = tmp_path / "out"
    workdir = root / "runs" / "a" / "seed=0"
    process = start_sweep(write_sweep(tmp_path / "sweep.py", sweep), root)
    try:
        wait_until(lambda: checkpoint_steps(workdir), process)
        os.kill(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output
    assert "interrupted: 0 of 2 runs finished" in output and "the same command resumes" in output
    assert not (root / "runs" / "a" / "seed=1").exists()  # the sweep stopped
    log = (root / "logs" / "a" / "seed=0.log").read_text()
    assert "interrupted: stopped at step" in log  # the run saved its step on the way out
    assert 20 < checkpoint_steps(workdir)[-1] < 200
    assert "2 runs: 0 finished, 0 failed, 2 not finished" in (root / "results.md").read_text()
