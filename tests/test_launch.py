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
