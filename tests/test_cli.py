"""What every entry point offers a newcomer: --help, --print_config, and the rule that
the command line's run length wins over the config file's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flaxft import config as config_lib
from flaxft.errors import InputError
from tests.tiny import set_dotted

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize(
    "entry, flags",
    [
        ("flaxft.main", ["--workdir", "--config", "--print_config", "--num_processes"]),
        ("flaxft.bench", ["--config", "--what", "--steps", "--print_config"]),
        ("flaxft.sweep", ["--config", "--workdir", "one after another"]),
        ("flaxft.convert", ["import-hf", "export-hf", "verify"]),
        ("flaxft.tasks.demo_data", ["OUT_DIR", "--tasks"]),
    ],
)
def test_help_of_every_entry_point(entry, flags):
    result = run("-m", entry, "--help")
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert flag in result.stdout, (flag, result.stdout)
    assert result.stderr == ""


def test_launchers_have_help():
    for script in ("launch/local.sh", "launch/tpu_pod.sh", "launch/slurm.sbatch"):
        result = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0 and "usage:" in result.stdout, (script, result.stdout + result.stderr)


def print_config(*overrides: str, config: str = "configs/finetune_classification.py") -> subprocess.CompletedProcess:
    return run("-m", "flaxft.main", "--config", config, "--workdir", "unused", "--print_config", *overrides)


def test_print_config_shows_the_resolved_config_and_runs_nothing():
    result = print_config("--config.learning_rate=0.001", config="configs/pretrain_tiny.py")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["learning_rate"] == 0.001 and printed["model"]["family"] == "bert"
    assert not (REPO / "unused").exists()


def test_a_config_file_argument_picks_a_phase():
    """`--config FILE:ARG` passes ARG to get_config: ModernBERT-base's context extension."""
    extend = json.loads(print_config(config="configs/pretrain_modernbert_base.py:8192").stdout)
    assert (extend["seq_len"], extend["lr_schedule"], extend["model"]["global_rope_theta"]) == (8192, "wsd", 160000.0)
    first = json.loads(print_config(config="configs/pretrain_modernbert_base.py").stdout)
    assert (first["seq_len"], first["model"]["global_rope_theta"]) == (1024, 10000.0)


def test_the_command_line_run_length_wins_and_both_is_an_error():
    from_file = json.loads(print_config().stdout)
    assert (from_file["task"]["epochs"], from_file["num_train_steps"]) == (3.0, 0)
    steps = json.loads(print_config("--config.num_train_steps=10").stdout)
    assert (steps["task"]["epochs"], steps["num_train_steps"]) == (0.0, 10)
    epochs = json.loads(print_config("--config.task.epochs=1", config="configs/finetune_qa.py").stdout)
    assert (epochs["task"]["epochs"], epochs["num_train_steps"]) == (1.0, 0)
    both = print_config("--config.num_train_steps=10", "--config.task.epochs=2")
    assert both.returncode == 2 and both.stdout == ""
    assert both.stderr.strip() == ("error: config.num_train_steps (10) and config.task.epochs (2.0) are both set; "
                                   "set one: a number of steps, or of passes over the training rows")


def test_warmup_is_steps_or_a_ratio_of_the_run_and_the_command_line_wins():
    from_file = json.loads(print_config().stdout)
    assert (from_file["warmup_ratio"], from_file["warmup_steps"]) == (0.1, 0)
    steps = json.loads(print_config("--config.warmup_steps=4").stdout)
    assert (steps["warmup_ratio"], steps["warmup_steps"]) == (0.0, 4)
    config = set_dotted(config_lib.default_config(), {"num_train_steps": 63, "warmup_steps": 0, "warmup_ratio": 0.1})
    config_lib.validate(config)
    config_lib.resolve_warmup(config)
    assert config.warmup_steps == 6  # int(0.1 * 63), transformers' rounding
    for values, message in (({"warmup_ratio": 0.1}, "are both set"), ({"warmup_ratio": 1.0}, r"in \[0, 1\)")):
        with pytest.raises(InputError, match=message):
            config_lib.validate(set_dotted(config_lib.default_config(), {"num_train_steps": 5, **values}))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"num_train_steps": 0}, "config.num_train_steps must be set for pretraining"),
        ({"num_train_steps": 5, "task.epochs": 1.0}, "config.task.epochs is for fine-tuning"),
        ({"task.name": "ner"}, "fine-tuning needs config.num_train_steps or config.task.epochs"),
        ({"task.name": "qa", "num_train_steps": 5, "task.epochs": 1.0}, "are both set"),
    ],
)
def test_run_length_rules(values, message):
    with pytest.raises(InputError, match=message):
        config_lib.validate(set_dotted(config_lib.default_config(), values))


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs").glob("*.py") if not p.stem.startswith("sweep_")),
                         ids=lambda p: p.stem)
def test_every_config_file_is_valid(path):
    """Each published config loads and passes validation as it stands (as `--config` reads it).
    Sweep files (sweep_*.py, dicts of runs) are planned by tests/test_sweep.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config_lib.validate(module.get_config())


@pytest.mark.slow
def test_a_freeze_regex_that_matches_no_parameter_exits_2_naming_config_freeze(tmp_path, task_files, minilm_dir):
    work = tmp_path / "work"
    result = run("-m", "flaxft.main", "--config", "configs/finetune_classification.py", "--workdir", str(work),
                 f"--config.init_from={minilm_dir}", f"--config.task.train_file={task_files}/classification/train.csv",
                 f"--config.task.validation_file={task_files}/classification/validation.csv",
                 "--config.freeze=encoder/layer_9/")
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: config.freeze 'encoder/layer_9/' matches no parameter (paths look like "
        "bert/embeddings/LayerNorm/bias)"]
    assert not work.exists()
