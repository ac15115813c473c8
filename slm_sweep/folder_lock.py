"""One launch at a time per folder: a sweep holds an exclusive lock on a file in its sweep directory, a cell on one in
its own folder, so that the same command started again while the first still runs (two ``make paper`` into one
``hydra.sweep.dir``, a single run into a ``hydra.run.dir`` in use) is refused before it writes anything, instead
of both training the same cells and writing over each other's files.

The lock is the operating system's (``flock``): it goes with the process that holds it, a killed launch included,
so a lock file left behind never blocks a rerun. Where the file system cannot lock (some network file systems),
the launch goes on and says so. Jobs a cluster scheduler still runs after their launching process ended hold only
their cells' locks, and only where the cluster's shared file system supports ``flock``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slm_sweep.results import now_iso, redact_overrides

try:
    import fcntl
except ImportError:  # not a POSIX system: no locking
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".slm_sweep.lock"
SWEEP_SETTING = "hydra.sweep.dir"
RUN_SETTING = "hydra.run.dir"

log = logging.getLogger(__name__)

# folder (absolute path) -> the descriptor of its lock file, for the locks this process holds until it exits
_held_to_exit: dict[Path, int] = {}


class FolderInUse(RuntimeError):
    """Another running launch holds the folder's lock."""


def _holder() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso(),
            "command": " ".join(redact_overrides(sys.argv))}


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def _acquire(folder: Path, setting: str) -> int | None:
    """The descriptor of ``folder``'s lock file, locked; None where locking is not available. Raises FolderInUse,
    naming the holder, when another process holds it."""
    if fcntl is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock_exclusive(fd)
    except BlockingIOError:
        with open(path, encoding="utf-8", errors="replace") as held:
            holder = _describe(held.read())
        os.close(fd)
        raise FolderInUse(f"{folder} is in use by another launch ({holder}), so this one runs nothing there: wait "
                          f"for it to end (then the same command resumes it), or launch into another folder "
                          f"({setting}=...)") from None
    except OSError as err:
        os.close(fd)
        log.warning("%s cannot be locked (%s): a second launch into this folder while this one runs would not be "
                    "refused", path, err)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(_holder()) + "\n").encode())
    return fd


def _lock_exclusive(fd: int, tries: int = 50) -> None:
    """``flock`` without waiting for a launch, tried for up to a second, 20 ms apart: ``held_elsewhere`` holds a
    shared lock for an instant while it looks (a report reading the folder; longer on a network file system)."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.02)


def _release(fd: int | None) -> None:
    if fd is not None:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)  # released now, whatever copies of the descriptor a fork left
        os.close(fd)


@contextmanager
def folder_lock(folder: str | Path, setting: str = RUN_SETTING) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; FolderInUse, before the block runs, when another launch holds it."""
    fd = _acquire(Path(folder), setting)
    try:
        yield
    finally:
        _release(fd)


def lock_until_exit(folder: str | Path, setting: str = SWEEP_SETTING) -> None:
    """Hold ``folder``'s lock until this process exits (a sweep's, from its first callback to its summary); a
    second call for the same folder in this process holds it already. FolderInUse when another process holds it."""
    key = Path(folder).absolute()
    if key in _held_to_exit:
        return
    fd = _acquire(key, setting)
    if fd is not None:
        _held_to_exit[key] = fd


def held_elsewhere(folder: str | Path) -> str | None:
    """Which other running process holds ``folder``'s lock (pid, host, since when, its command), None where none
    does or locking is not available."""
    path = Path(folder) / LOCK_FILE
    if fcntl is None or Path(folder).absolute() in _held_to_exit or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        with open(fd, encoding="utf-8", errors="replace", closefd=False) as held:
            return _describe(held.read())
    except OSError:
        return None
    finally:
        os.close(fd)  # releases the shared lock where it was taken
    return None
