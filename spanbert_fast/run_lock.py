"""An exclusive lock on a folder, so that two runs never write into one folder at once.

    with lock_folder(out, "prepare") as lock:
        lock.record(files=[...])       # what this run is about to create, for the next run
        ...

The lock is ``<folder>/.spanbert-fast.lock``, a small JSON file naming its owner: command, pid,
host, start time, plus whatever the owner :meth:`FolderLock.record`\\ s. Exclusion comes from a POSIX
record lock (``fcntl.lockf``) on that file, which the kernel drops when the owning process dies,
even by ``kill -9``: a lock file left by a dead run is stale and is simply taken over, and the new
owner finds what the dead one recorded in :attr:`FolderLock.stale_owner` (to clean up after it).
Record locks are not inherited by forked children, so worker processes never keep a dead run's lock.

Where the filesystem has no record locks, liveness falls back to the pid: a lock naming a pid of this
host that no longer runs is stale; one naming another host is respected until removed by hand.

A second run gets :class:`FolderLockedError`, one line naming the owner. Within one process a folder
can be locked once (record locks are per process, so a second lock would not exclude anything).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from typing import Dict, Optional

LOCK_FILE = ".spanbert-fast.lock"

_held_in_this_process: set = set()
_held_guard = threading.Lock()


class FolderLockedError(RuntimeError):
    """The folder is locked by another live run; the message names it (command, pid, host)."""

    def __init__(self, folder: str, owner: Optional[Dict]):
        self.folder = folder
        self.owner = owner
        super().__init__(f"{folder} is in use by {describe_owner(owner)}; wait for it to finish or use another folder")


def describe_owner(owner: Optional[Dict]) -> str:
    """``prepare (pid 123 on host node1, since 2026-12-01 10:00:00)``, from a lock file's record."""
    if not owner:
        return "another run (its lock file is being written)"
    since = ""
    if isinstance(owner.get("started_unix"), (int, float)):
        since = ", since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["started_unix"]))
    return f"{owner.get('command', 'a run')} (pid {owner.get('pid', '?')} on host {owner.get('host', '?')}{since})"


def _read_record(fd: int) -> Optional[Dict]:
    """The JSON record in the lock file open as ``fd``; None when empty or unreadable."""
    try:
        raw = os.pread(fd, 1 << 16, 0)
        record = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _pid_running(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class FolderLock:
    """A held lock (from :func:`lock_folder`); :meth:`release` or leave the ``with`` block to free it."""

    def __init__(self, folder: str, fd: int, record: Dict, stale_owner: Optional[Dict]):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self.stale_owner = stale_owner  # what a dead previous owner recorded (None if there was none)
        self._fd: Optional[int] = fd
        self._record = record
        self._write()

    def record(self, **values) -> None:
        """Add ``values`` (JSON) to the lock file's record and write it durably, e.g. the files
        this run is about to create, so that the next owner can remove them if this run dies."""
        self._record.update(values)
        self._write()

    def _write(self) -> None:
        data = json.dumps(self._record, indent=1).encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd is None:
            return
        # unlink first, then close (which drops the record lock): a run that opened the old file
        # meanwhile sees, after getting the lock, that it is no longer the file at this path.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        with _held_guard:
            _held_in_this_process.discard(os.path.realpath(self.folder))

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_folder(folder, command: str) -> FolderLock:
    """Lock ``folder`` (created if needed) for ``command``; raises :class:`FolderLockedError`
    naming the owner when another live run holds it."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    with _held_guard:
        if key in _held_in_this_process:
            raise FolderLockedError(folder, {"command": "this process", "pid": os.getpid(), "host": socket.gethostname()})
        _held_in_this_process.add(key)
    try:
        return _acquire(folder, command)
    except BaseException:
        with _held_guard:
            _held_in_this_process.discard(key)
        raise


def _acquire(folder: str, command: str) -> FolderLock:
    import fcntl

    path = os.path.join(folder, LOCK_FILE)
    host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # umask applies
        try:
            previous = _read_record(fd)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno in (errno.EACCES, errno.EAGAIN):
                    raise FolderLockedError(folder, _read_record(fd) or previous) from None
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                # no record locks here: judge the owner by its pid (same host) or respect it
                if previous and previous.get("pid") != os.getpid() and (
                        previous.get("host") != host or _pid_running(previous.get("pid"))):
                    raise FolderLockedError(folder, previous) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the previous owner released (unlinked) it meanwhile: start again
                os.close(fd)
                continue
            record = {"command": command, "pid": os.getpid(), "host": host, "started_unix": time.time()}
            return FolderLock(folder, fd, record, stale_owner=_read_record(fd))
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise
