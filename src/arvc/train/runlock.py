"""One trainer per run folder: while a process trains a run, RUN/.arvc-run.lock holds its PID and host.

Two `arvc train --resume runs/s1` at once both "succeeded": validation.csv got duplicate rows and the
checkpoints interleaved. Now the second is refused with an `error:` naming the first's PID; so are the
web UI and `arvc compare` (which locks its comparison folder, and each contestant's run).

The lock is an OS lock (flock, released by the kernel when its holder dies) on a file that says who
holds it. A lock file whose process is gone (kill -9, a power cut) is stale: the next trainer takes it
over, with a warning. A PID that is alive but holds no OS lock (another machine sharing the folder, an
older arvc) is respected too: the file's word is enough to refuse. So is the lock of a process on
another host (a shared folder), which cannot be checked from here: the error names that host and PID and
the file to delete if that machine is gone. The lock is removed when the run ends, fails or is stopped.

Several processes of one run (DDP): only the process that started them (`arvc train --nproc N`) or,
under torchrun, rank 0 holds the lock; the other ranks, and rank 0 whose launcher holds it, neither
check nor take it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from arvc.data.outputs import RUN_LOCK
from arvc.train.errors import TrainError

try:
    import fcntl
except ImportError:  # Windows: the PID in the file is the lock
    fcntl = None

__all__ = ["RUN_LOCK", "Holder", "RunLocked", "check_unlocked", "lock_holder", "run_lock"]

logger = logging.getLogger(__name__)


class RunLocked(TrainError):
    """Another live process trains this run (the message names it and what to do)."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run's lock, as its file says."""

    pid: int
    host: str
    started: str | None  # the process's start time (/proc), to tell a reused PID from the holder
    since: float  # when it took the lock (time.time())
    command: str

    @classmethod
    def read(cls, path: Path) -> Holder | None:
        try:
            record = json.loads(Path(path).read_text())
            return cls(int(record["pid"]), str(record["host"]), record.get("started"),
                       float(record.get("since", 0)), str(record.get("command", "")))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def alive(self) -> bool:
        """Whether the holding process still runs (a process on another host is taken to run)."""
        if self.host != socket.gethostname():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process
            pass
        stat = _proc_stat(self.pid)
        if stat is None:
            return True
        state, started = stat
        return state != "Z" and (self.started is None or started == self.started)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)) if self.since else "?"
        command = f", `{self.command}`" if self.command else ""
        return f"PID {self.pid} on {self.host}{command}, since {when}"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process from /proc (Linux); None where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3, starttime field 22
    return fields[0], fields[19]


def _this_process() -> dict:
    stat = _proc_stat(os.getpid())
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": stat[1] if stat else None,
        "since": time.time(),
        "command": " ".join(["arvc", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("arvc", "__main__.py")
        else " ".join(sys.argv),
    }  # fmt: skip


def _excepted() -> bool:
    """DDP: every rank but 0 leaves the lock to rank 0 (or to the launcher that started the ranks)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0


def _launcher_holds(holder: Holder | None) -> bool:
    """Rank 0 started by `arvc train --nproc N`: its parent, the launcher, holds the lock for the ranks."""
    return (
        holder is not None
        and int(os.environ.get("WORLD_SIZE", "1")) > 1
        and holder.pid == os.getppid()
        and holder.host == socket.gethostname()
    )


# The locks this process holds: resolved folder -> [open file, nesting count, thread]. `arvc train`
# takes the lock before preparing the data and `train()` takes it again: the same thread nests.
_held: dict[Path, list] = {}
_held_lock = threading.Lock()


def lock_holder(folder: str | os.PathLike, include_self: bool = False) -> Holder | None:
    """The live process that trains `folder`, other than this one (with `include_self`, this one too),
    its launcher and, under DDP, its fellow ranks; None when the folder is free or its lock is stale."""
    if _excepted():
        return None
    holder = Holder.read(Path(folder) / RUN_LOCK)
    if holder is None or _launcher_holds(holder) or not holder.alive():
        return None
    if holder.pid == os.getpid() and holder.host == socket.gethostname():  # this process (run_lock nests)
        return holder if include_self else None
    return holder


def _locked_message(folder: Path, holder: Holder | None) -> str:
    who = holder.describe() if holder is not None else "another process"
    lead = f"{folder} is being trained by another process ({who}): one process at a time trains a run."
    here = socket.gethostname()
    if holder is not None and holder.host != here:  # a shared folder: its PID cannot be checked from here
        return (
            f"{lead} {holder.host} is another machine than this one ({here}), so arvc cannot tell whether "
            f"that process still runs. Wait for it to finish or stop it there (kill -INT {holder.pid} on "
            f"{holder.host}), then try again (nothing was changed). If {holder.host} is gone or PID "
            f"{holder.pid} no longer runs there, delete {folder / RUN_LOCK}, then try again."
        )
    stop = f" (kill -INT {holder.pid})" if holder is not None else ""
    return (
        f"{lead} Wait for it to finish or stop it{stop}, then try again (nothing was changed). If that "
        f"process is gone, remove {folder / RUN_LOCK}."
    )


def check_unlocked(folder: str | os.PathLike) -> None:
    """Refuse, before any work, a folder another live process is training (RunLocked naming its PID)."""
    holder = lock_holder(folder)
    if holder is not None:
        raise RunLocked(_locked_message(Path(folder), holder))


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold `folder`'s lock for the duration; RunLocked if a live process holds it. A stale lock (its
    process is gone) is taken over with a warning. Removed on the way out, whatever ends the block (the
    end of training, an error, Ctrl-C); a folder made here for the lock and left empty goes with it (a
    run refused by a later check leaves nothing behind)."""
    folder = Path(folder)
    path = folder / RUN_LOCK
    holder = Holder.read(path)
    if _excepted() or _launcher_holds(holder):
        yield
        return
    key = folder.resolve()
    with _held_lock:
        entry = _held.get(key)
        if entry is not None and entry[2] == threading.get_ident():
            entry[1] += 1
            nested = True
        elif entry is not None:
            raise RunLocked(
                f"{folder} is being trained by another thread of this process (nothing was changed)"
            )
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_lock:
                _held[key][1] -= 1
        return
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    handle = _acquire(folder, path)
    with _held_lock:
        _held[key] = [handle, 1, threading.get_ident()]
    try:
        yield
    finally:
        with _held_lock:
            entry = _held[key]
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[key]
        if last:
            _release(path, handle)
            for empty in made:  # folders this lock made, when nothing else was written into them
                try:
                    empty.rmdir()
                except OSError:
                    break


def _acquire(folder: Path, path: Path):
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(10):  # the file may be removed by its holder between our open and our flock
        handle = open(path, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise RunLocked(_locked_message(folder, Holder.read(path))) from None
            try:
                same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                handle.close()
                continue
        holder = Holder.read(path)
        if holder is not None and holder.alive() and holder.pid != os.getpid():  # no flock: its word counts
            handle.close()
            raise RunLocked(_locked_message(folder, holder))
        if holder is not None:
            logger.warning(
                "%s: taking over a stale lock of %s (that process is gone; it did not end the run cleanly)",
                folder,
                holder.describe(),
            )
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_this_process()))
        handle.flush()
        os.fsync(handle.fileno())
        return handle
    raise RunLocked(f"{folder}: could not take its lock {path} (it kept changing); try again")


def _release(path: Path, handle) -> None:
    try:
        if Holder.read(path) is not None and Holder.read(path).pid == os.getpid():
            path.unlink(missing_ok=True)
    except OSError as error:  # a folder that turned read-only: the lock is stale once we exit
        logger.warning("could not remove the run lock %s: %s", path, error)
    finally:
        handle.close()  # releases the flock
