"""A run's workdir: checked before anything else is done, and held by one run at a time.

`Claim(path)` makes sure the workdir is a folder this process can create and write
(else an InputError naming it, before any tokenizing or compiling), then takes its lock:
the file WORKDIR/.flaxft.lock, created with O_CREAT | O_EXCL and holding who took it
(host, pid, process start time, since when). A second run finds the file and stops with
an InputError naming the holder. The holder refreshes the file's modification time every
HEARTBEAT_S seconds; a lock is stale when its holder ran on this host and is gone (its
pid is free or now belongs to a later process), or when its heartbeat is older than
STALE_S (a holder on another host that died). A stale lock is taken over with a one-line
notice. In multi-process runs process 0 takes the lock and the others learn the outcome.

Why a lock file and not flock/fcntl: pods and clusters share workdirs over NFS, Filestore
or gcsfuse, where advisory locks are ignored without a word (NFS mounted with `nolock`,
gcsfuse) or lost when a client reconnects; an exclusive create is atomic on local
filesystems and NFSv3 or later, and the heartbeat lets a run on another host tell a
live holder from a dead one. The cost: a run killed on another host keeps the workdir
busy for up to STALE_S.
"""

import contextlib
import datetime
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from flaxft.errors import InputError

LOCK = ".flaxft.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (Linux), else None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    """Clock ticks after boot at which process `pid` started (Linux), else None."""
    stat = _proc_stat(pid)
    return None if stat is None else int(stat[19])


def _holder_alive(holder: dict, age_s: float) -> bool:
    """Whether the run described by a lock file's content may still be running."""
    if holder.get("host") != socket.gethostname():
        return age_s < STALE_S
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return age_s < STALE_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds that pid
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True
    if stat[0] in ("Z", "X"):  # killed and not yet reaped by its parent: gone
        return False
    return holder.get("started") in (None, int(stat[19]))


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"


class Lock:
    """The lock file of one workdir, held by this process from `acquire` to `release`."""

    def __init__(self, workdir: Path):
        self.path = workdir / LOCK
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> None:
        """Takes the lock; InputError naming the holder when a live run has it, or naming
        the folder when it cannot be written."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
              "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        for _ in range(3):  # a stale lock is moved aside, then the create is tried again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as e:
                raise InputError(f"{self.path.parent}: workdir is not writable ({e.strerror})") from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            self._heartbeat = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
            self._heartbeat.start()
            return
        raise InputError(f"{self.path}: could not take the workdir lock (another run keeps taking it)")

    def _take_over_if_stale(self) -> None:
        try:
            text = self.path.read_text()
            age_s = datetime.datetime.now().timestamp() - self.path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            holder = {}
        if _holder_alive(holder, age_s):
            raise InputError(f"{self.path.parent}: workdir is in use by another run ({_describe(holder)}); "
                             "wait for it to finish or choose another --workdir")
        try:
            if self.path.read_text() != text:
                return  # someone else took it over meanwhile
            self.path.unlink()
        except FileNotFoundError:
            return
        print(f"notice: {self.path} was left by a run that is gone ({_describe(holder)}); taking the workdir over")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def check(path: Path) -> bool:
    """InputError unless `path` is a folder (made now, with its parents, if missing);
    returns whether it was made now."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: the workdir is a file, not a folder")
    if path.is_dir():
        return False
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        if not path.is_dir():
            raise InputError(f"{path}: the workdir is a file, not a folder") from None
        return False
    except OSError as e:
        raise InputError(f"{path}: cannot create the workdir ({e.strerror})") from None
    return True


class Claim:
    """This process's hold on a workdir: its lock, and whether the workdir was made for it."""

    def __init__(self, path: Path):
        self.path = path
        self.made = check(path)
        self.lock = Lock(path)
        try:
            self.lock.acquire()
        except InputError:
            self._undo()
            raise

    def release(self, failed_on_input: bool = False) -> None:
        """Releases the lock; after bad input, also removes a workdir made for this run."""
        self.lock.release()
        if failed_on_input:
            self._undo()

    def _undo(self) -> None:
        if self.made:
            shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def held(claim: Claim | None) -> Iterator[None]:
    """Keeps `claim` (None on processes that hold no lock) while the block runs; when the
    block fails with an InputError, what the claim made goes again: the lock, and the
    workdir itself if it did not exist before."""
    try:
        yield
    except InputError:
        if claim is not None:
            claim.release(failed_on_input=True)
            claim = None
        raise
    finally:
        if claim is not None:
            claim.release()
