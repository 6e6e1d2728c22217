"""Advisory locks on directories: one writer per directory, readers shared, a bounded wait."""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time

from tinyq.io import errors

LOCK_TIMEOUT_ENV = "TINYQ_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 120.0


class LockTimeout(errors.Busy):
    """Another process held the lock for longer than the bounded wait (exit 11)."""


def _lock_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT_S


def open_lock(directory: str) -> int:
    """A descriptor of the directory itself, which is what is flocked: no lock file is left behind,
    and a read-only directory locks too. -1 when the directory cannot be opened (a missing one:
    the write that follows fails with its own message)."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
            return -1
        raise


def acquire(fd: int, directory: str, shared: bool) -> None:
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    deadline, told = time.monotonic() + _lock_timeout(), False
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{directory}: another tinyq tool is still writing there (it holds the directory's lock) after "
                              f"{_lock_timeout():.0f} s; wait for it to finish and retry, or raise {LOCK_TIMEOUT_ENV}")
        if not told:
            print(f"tinyq: waiting for {directory}: another tinyq tool is writing there", file=sys.stderr)
            told = True
        time.sleep(0.05)
