"""Operating runs safely, with real processes and real filesystems: one run per workdir,
workdirs that cannot work, a disk that fills up during a save."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from flaxft import report
from tests.tiny import RUN, logged_step, run_main, start_main, tmpfs, wait_for, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_exits_2_at_once_and_the_first_is_unaffected(tmp_path, corpus):
    first = start_main(corpus, tmp_path, num_train_steps=40)
    wait_for(lambda: logged_step(tmp_path) >= 1, first)
    started = time.monotonic()
    second = run_main(corpus, tmp_path, num_train_steps=40)
    assert second.returncode == 2 and time.monotonic() - started < 30
    line = one_error_line(second)
    assert f"{tmp_path}: workdir is in use by another run (pid {first.pid} on host " in line and " since " in line
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-2000:]
    steps = [r["step"] for r in report.read_metrics(tmp_path) if "loss" in r]
    assert steps == list(range(1, 41)), steps  # no step logged twice
    assert not (tmp_path / ".flaxft.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["file", "under_a_file"])
def test_a_workdir_that_cannot_be_one_exits_2_before_any_work(tmp_path, corpus, case):
    (tmp_path / "taken").write_text("not a folder")
    workdir = tmp_path / "taken" if case == "file" else tmp_path / "taken" / "work"
    result = run_main(corpus, workdir)
    assert result.returncode == 2 and result.stdout == ""
    line = one_error_line(result)
    expected = "the workdir is a file, not a folder" if case == "file" else "cannot create the workdir (Not a directory)"
    assert f"{workdir}: {expected}" in line
    assert (tmp_path / "taken").read_text() == "not a folder"


@pytest.mark.slow
def test_a_read_only_workdir_exits_2_before_any_work(tmp_path, corpus):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
        for workdir in (mount, mount / "new"):
            result = run_main(corpus, workdir)
            assert result.returncode == 2 and result.stdout == ""
            assert "Read-only file system" in one_error_line(result) and str(workdir) in result.stderr


def test_stale_lock_of_a_process_that_is_gone_is_taken_over(tmp_path):
    from flaxft import workdir as workdir_lib

    dead = subprocess.Popen(["true"])  # a process that is gone
    dead.wait()
    (tmp_path / workdir_lib.LOCK).write_text(
        f'{{"host": "{os.uname().nodename}", "pid": {dead.pid}, "started": 1, "since": "earlier"}}\n')
    claim = workdir_lib.Claim(tmp_path)
    try:
        assert f'"pid": {os.getpid()}' in (tmp_path / workdir_lib.LOCK).read_text()
        with pytest.raises(workdir_lib.InputError, match=f"in use by another run \\(pid {os.getpid()} on host"):
            workdir_lib.Claim(tmp_path)
    finally:
        claim.release()
    assert not (tmp_path / workdir_lib.LOCK).exists()


def test_a_lock_of_a_killed_process_not_yet_reaped_is_taken_over(tmp_path):
    """A run killed by SIGKILL stays a zombie until its parent (a sweep, a shell) reaps
    it; its lock is free at once."""
    from flaxft import workdir as workdir_lib

    zombie = subprocess.Popen(["sleep", "60"])
    started = workdir_lib._start_time(zombie.pid)
    zombie.kill()
    while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    (tmp_path / workdir_lib.LOCK).write_text(
        f'{{"host": "{os.uname().nodename}", "pid": {zombie.pid}, "started": {started}, "since": "earlier"}}\n')
    try:
        workdir_lib.Claim(tmp_path).release()
    finally:
        zombie.wait()


def test_a_lock_from_another_host_is_stale_only_when_its_heartbeat_stopped(tmp_path):
    from flaxft import workdir as workdir_lib

    lock = tmp_path / workdir_lib.LOCK
    lock.write_text('{"host": "elsewhere", "pid": 1, "since": "earlier"}\n')
    with pytest.raises(workdir_lib.InputError, match="pid 1 on host elsewhere"):
        workdir_lib.Claim(tmp_path)
    old = time.time() - workdir_lib.STALE_S - 1
    os.utime(lock, (old, old))
    workdir_lib.Claim(tmp_path).release()


def test_bad_input_removes_a_workdir_made_for_the_run_but_keeps_one_that_was_there(tmp_path, corpus):
    from flaxft import train
    from flaxft.errors import InputError
    from tests.tiny import tiny_config

    bad = tiny_config(corpus, **{**RUN, "data.path": str(tmp_path / "missing.txt")})
    with pytest.raises(InputError, match="missing.txt"):
        train.run(bad, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("mine")
    with pytest.raises(InputError):
        train.run(bad, str(tmp_path / "old"))
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["notes.txt"]
