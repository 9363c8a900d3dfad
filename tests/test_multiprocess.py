"""Real multi-process runs: launch/local.sh starts jax.distributed processes on this machine."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import losses, tiny_flags, write_corpus

REPO = Path(__file__).resolve().parents[1]
STEPS = dict(num_train_steps=6, log_every_steps=1, eval_every_steps=6, checkpoint_every_steps=3)


def launch(num_processes: int, devices: int, workdir: Path, corpus: Path, log_dir: Path, *extra: str):
    env = {**os.environ, "PYTHON": sys.executable, "FLAXFT_LOG_DIR": str(log_dir), "HF_HUB_OFFLINE": "1"}
    args = [*tiny_flags(corpus, **STEPS), "--workdir", str(workdir), *extra]
    return subprocess.run(["bash", "launch/local.sh", str(num_processes), str(devices), "--", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The tiny corpus's documents in four text files."""
    folder = tmp_path_factory.mktemp("corpus")
    documents = [json.loads(line)["text"] for line in write_corpus(folder).read_text().splitlines()]
    for index in range(4):
        (folder / f"shard-{index}.txt").write_text("\n\n".join(documents[index::4]))
    (folder / "docs.jsonl").unlink()
    return folder


@pytest.mark.slow
def test_two_processes_read_disjoint_shards_and_match_one_process(tmp_path, corpus):
    """Two processes (a data stream each: its two files) train as one process reading both
    streams; a checkpoint of the two (their stream positions merged) resumes on one."""
    one = launch(1, 8, tmp_path / "one", corpus, tmp_path / "logs1", "--config.data.streams=2")
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(2, 4, tmp_path / "two", corpus, tmp_path / "logs2")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "process 0/2: 4 local devices, loads 4 of 8 rows per batch" in two.stdout
    assert "process 0/2: data streams 0-0 of 2," in two.stdout and "2 file(s): shard-0.txt, shard-2.txt" in two.stdout
    cores = len(os.sched_getaffinity(0))
    assert f"up to {max(1, cores // 2)} preparing worker(s)" in two.stdout  # the host's cores shared by its 2 processes
    other = (tmp_path / "logs2" / "process_1.log").read_text()
    assert "process 1/2: 4 local devices, loads 4 of 8 rows per batch" in other
    assert "process 1/2: data streams 1-1 of 2," in other and "2 file(s): shard-1.txt, shard-3.txt" in other
    assert "step 6/6" not in other  # only process 0 reports progress and writes metrics
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 6
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 1e-5, (a, b)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
    saved = json.loads((tmp_path / "two" / "checkpoints" / "3" / "data" / "metadata").read_text())
    assert sorted(saved["positions"]) == ["0", "1"]
    shutil.rmtree(tmp_path / "two" / "checkpoints" / "6")
    resumed = launch(1, 8, tmp_path / "two", corpus, tmp_path / "logs3", "--config.data.streams=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 3" in resumed.stdout
    c = losses(tmp_path / "two")
    assert max(abs(x - y) / x for x, y in zip(a, c)) < 1e-5, (a, c)


@pytest.mark.slow
def test_a_failing_process_fails_the_launch(tmp_path, corpus):
    result = launch(2, 4, tmp_path / "w", corpus, tmp_path / "logs", "--config.mesh.data=3")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "config.mesh" in result.stderr
