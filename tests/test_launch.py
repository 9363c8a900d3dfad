"""Launchers: their dry runs print the exact commands; bad usage exits 2."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARGS = ["--config", "configs/pretrain_bert_base.py", "--workdir", "/mnt/shared/bert base", "--config.mesh.fsdp=-1"]


def sh(*args, env=None):
    return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_tpu_pod_dry_run_prints_every_command():
    result = sh("launch/tpu_pod.sh", "--dry-run", "bert-pod", "us-central2-b", "v4-32", "--", *ARGS)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create bert-pod --zone us-central2-b --accelerator-type v4-32")
    assert lines[1].startswith("git -C") and "archive" in lines[1]
    assert all("--worker=all" in line for line in lines[2:])
    assert "python3\\ -m\\ flaxft.main\\ --config\\ configs/pretrain_bert_base.py" in lines[-1]
    assert "bert\\\\\\ base" in lines[-1]  # arguments keep their quoting through ssh


def test_slurm_dry_run_prints_srun():
    result = sh("launch/slurm.sbatch", *ARGS, env={"FLAXFT_DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("srun --kill-on-bad-exit=1 python3 -m flaxft.main --config configs/pretrain_bert_base.py")
    assert "bert\\ base" in result.stdout


def test_bad_usage_exits_2():
    for script in ("launch/local.sh", "launch/tpu_pod.sh"):
        result = sh(script, "2")
        assert result.returncode == 2 and "usage:" in result.stderr, script


def test_device_check_dry_run_prints_the_check_and_one_bench_per_model():
    result = sh("launch/device_check.sh", "--dry-run", env={"PYTHON": "python3"})
    assert result.returncode == 0, result.stderr
    check, *benches = result.stdout.strip().splitlines()
    assert check.startswith("timeout -k 10 80 python3 -m flaxft.attention_check --batch 8 --seq 512 --heads 12")
    assert "--dtypes float32\\,bfloat16 --implementations dot_product\\,flash" in check
    configs = ["configs/pretrain_bert_base.py", "configs/pretrain_bert_large.py", "configs/pretrain_modernbert_base.py"]
    assert len(benches) == len(configs)
    for line, config in zip(benches, configs):
        assert line.startswith("timeout -k 10 ") and f"python3 -m flaxft.bench --config {config} " in line
        assert "--config.model.dtype=bfloat16 --config.model.attention=FASTEST --steps 10" in line
    assert "--config.seq_len=512" in benches[0] and "--config.seq_len=512" in benches[1]
    assert "--config.seq_len=1024 " in benches[2] and "--config.model.pad_token_id=1" in benches[2]
    # The timeouts keep the whole check under 8 minutes.
    assert sum(int(line.split()[3]) for line in [check, *benches]) + 10 * 4 < 8 * 60
    fixed = sh("launch/device_check.sh", "--dry-run", "--attention", "flash", "--steps", "3")
    assert fixed.returncode == 0 and fixed.stdout.count("--config.model.attention=flash --steps 3") == 3


def test_device_check_help_and_bad_usage():
    result = sh("launch/device_check.sh", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage:") and "--dry-run" in result.stdout
    for args in (["--frobnicate"], ["--attention", "fast"], ["--steps", "0"], ["--attention"]):
        result = sh("launch/device_check.sh", *args)
        assert result.returncode == 2 and result.stdout == "", args
        assert len(result.stderr.strip().splitlines()) == 1, args
