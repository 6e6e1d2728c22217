"""Multi-file writes that land as one unit, one writer per directory, and recovery after a kill.

A write of several files (model, sidecar, fixtures, registry) goes:

1. lock every target directory (an advisory flock on the directory itself, bounded wait);
2. stage each new file as a fsynced temp beside its target, keep each old one aside (hard link);
3. write the journal `.tinyq-journal.json` beside the last target: the commit point;
4. rename every temp into place (or unlink, for a deletion), fsync the directories;
5. remove the journal, then the kept-aside files.

A kill before 3 leaves the old files and stale temps; a kill after it leaves a journal that the next
run replays forward, under the lock, before it reads anything. Either way the next run sees the old
state or the new one, never a mix. Stale temps (a kill before 3, or after 5) are swept under the lock.
An error during 4 (the process still alive) rolls back from the kept-aside files.

TINYQ_FAULT_KILL_AT=N kills the process with SIGKILL at the Nth write or rename step: the hook the
fault-injection tests use to stop a tool at every step.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from tinyq.io import errors

JOURNAL_NAME = ".tinyq-journal.json"
LOCK_TIMEOUT_ENV = "TINYQ_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 120.0
_TEMP_NAME = re.compile(r"^\..*\.[A-Za-z0-9_]{8}\.(tmp|old)$")  # what _temp_name makes
_NAME_BYTES = 180  # of a target's name kept in its temp name, so a legal 255-byte name stays legal

_held: Set[str] = set()  # the real directories this process holds: an inner request rides on the outer lock
_steps = [0]


class LockTimeout(errors.Busy):
    """Another process held the lock for longer than the bounded wait (exit 11)."""


def _fault_point() -> None:
    """The fault-injection hook: SIGKILL at the step TINYQ_FAULT_KILL_AT names."""
    at = os.environ.get("TINYQ_FAULT_KILL_AT")
    if not at:
        return
    _steps[0] += 1
    if _steps[0] == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


def _lock_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT_S


def _open_lock(directory: str) -> int:
    """A descriptor of the directory itself, which is what is flocked: no lock file is left behind,
    and a read-only directory locks too. -1 when the directory cannot be opened (a missing one:
    the write that follows fails with its own message)."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
            return -1
        raise


def _acquire(fd: int, directory: str, shared: bool) -> None:
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


@contextlib.contextmanager
def locked(directory, shared: bool = False, sweep_subdirectories: bool = True) -> Iterator[None]:
    """Holds the directory's lock: exclusive for writers, shared for readers. Reentrant within a
    process (an inner request, shared or not, rides on the outer one). On first taking it, an
    interrupted update in the directory is finished and stale temps are swept, in its immediate
    subdirectories too unless sweep_subdirectories is False (a reader that must not even list
    the held-out fixtures/)."""
    key = os.path.realpath(directory)
    if key in _held:
        yield
        return
    journal = os.path.join(key, JOURNAL_NAME)
    fd = _open_lock(key)
    if fd >= 0:
        try:
            _acquire(fd, key, shared and not os.path.exists(journal))
        except BaseException:
            os.close(fd)
            raise
    _held.add(key)
    try:
        if fd >= 0 and shared and os.path.exists(journal):
            _acquire(fd, key, False)  # a killed writer's journal: finish it exclusively
        if fd >= 0 or not os.path.exists(journal):
            recover(key, sweep_subdirectories)
        yield
    finally:
        _held.discard(key)
        if fd >= 0:
            os.close(fd)  # releases the flock


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _temp_prefix(target: str) -> Tuple[str, str]:
    """(directory, `.<name>.`) for temps beside target, the name cut to fit: what _TEMP_NAME matches."""
    directory, name = os.path.split(target)
    return directory, f".{os.fsdecode(os.fsencode(name)[:_NAME_BYTES])}."


def _temp_name(target: str, suffix: str) -> str:
    """An unused temp path beside target: `.<name>.<8 random>.<suffix>`."""
    directory, prefix = _temp_prefix(target)
    return tempfile.mktemp(prefix=prefix, suffix=f".{suffix}", dir=directory)


def real_target(path) -> str:
    """Where a write to path lands: through a symlink to its target, so a shared registry keeps
    receiving entries."""
    return os.path.realpath(os.fspath(path))


def _stage(target: str, data: bytes) -> str:
    """A fsynced temp beside target holding data, with the old file's permissions (0644 when new)."""
    directory, prefix = _temp_prefix(target)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _fault_point()
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _copy_mode(target, tmp)
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _stage_named(target: str, data: bytes) -> str:
    try:
        return _stage(target, data)
    except OSError as e:  # name the file being written, not its temp
        raise OSError(e.errno, e.strerror, target) from None


def _copy_mode(target: str, tmp: str) -> None:
    try:
        st = os.stat(target)
    except FileNotFoundError:
        os.chmod(tmp, 0o644)
        return
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(tmp, st.st_uid, st.st_gid)


def _keep_aside(target: str) -> Optional[str]:
    """A hard link to the file at target under a temp name, or None when there is no file."""
    if not os.path.lexists(target):
        return None
    old = _temp_name(target, "old")
    _fault_point()
    os.link(target, old)
    return old


def _write_journal(path: str, state: str, entries: Sequence[Dict[str, Optional[str]]]) -> None:
    directory = os.path.dirname(path)
    rel = [{k: (os.path.relpath(v, directory) if v else None) for k, v in e.items()} for e in entries]
    tmp = _stage(path, json.dumps({"state": state, "files": rel}, sort_keys=True).encode())
    _fault_point()
    os.replace(tmp, path)
    _fsync_dir(directory)


def write_all(files: Sequence[Tuple[str, Optional[bytes]]]) -> None:
    """Writes (or, for None, removes) every target or none, as the module docstring says.
    Targets are real paths (see real_target); the caller holds no lock or holds these."""
    if not files:
        return
    targets = [t for t, _ in files]
    dirs = sorted({os.path.dirname(t) for t in targets})
    with contextlib.ExitStack() as stack:
        for d in dirs:
            stack.enter_context(locked(d))
        entries: List[Dict[str, Optional[str]]] = []
        try:
            for target, data in files:
                entries.append({"final": target, "tmp": _stage_named(target, data) if data is not None else None, "old": None})
            for e in entries:
                e["old"] = _keep_aside(e["final"])
        except BaseException:
            _discard(entries)
            raise
        journal = os.path.join(os.path.dirname(targets[-1]), JOURNAL_NAME)
        try:
            _write_journal(journal, "commit", entries)
        except BaseException:
            _discard(entries)
            raise
        try:
            _roll_forward(entries)
        except BaseException:
            _write_journal(journal, "rollback", entries)
            _roll_back(entries)
            _finish(journal, entries)
            raise
        _finish(journal, entries)


def _discard(entries) -> None:
    for e in entries:
        for key in ("tmp", "old"):
            if e.get(key):
                _unlink(e[key])


def _roll_forward(entries) -> None:
    for e in entries:
        _fault_point()
        if e["tmp"] is None:
            _unlink(e["final"])
        elif os.path.exists(e["tmp"]):
            os.replace(e["tmp"], e["final"])
    for d in sorted({os.path.dirname(e["final"]) for e in entries}):
        _fsync_dir(d)


def _roll_back(entries) -> None:
    for e in entries:
        if e["old"] and os.path.exists(e["old"]):
            os.replace(e["old"], e["final"])
        elif not e["old"] and e["tmp"] and not os.path.exists(e["tmp"]):
            _unlink(e["final"])  # it was new, and already renamed into place
        if e["tmp"]:
            _unlink(e["tmp"])
    for d in sorted({os.path.dirname(e["final"]) for e in entries}):
        _fsync_dir(d)


def _finish(journal: str, entries) -> None:
    _fault_point()
    _unlink(journal)
    _fsync_dir(os.path.dirname(journal))
    for e in entries:
        if e["old"]:
            _fault_point()
            _unlink(e["old"])


def recover(directory: str, sweep_subdirectories: bool = True) -> None:
    """Finishes an interrupted update (the caller holds the lock), then sweeps stale temps."""
    journal = os.path.join(directory, JOURNAL_NAME)
    try:
        with open(journal, "rb") as f:
            doc = json.load(f)
    except FileNotFoundError:
        doc = None
    except (OSError, ValueError):
        doc = {"state": "broken", "files": []}  # the journal's own rename never happened: nothing began
    if doc is not None:
        entries = [{k: (os.path.join(directory, v) if v else None) for k, v in e.items()} for e in doc.get("files", [])]
        if doc.get("state") == "commit":
            _roll_forward(entries)
        elif doc.get("state") == "rollback":
            _roll_back(entries)
        _finish(journal, entries)
    _sweep(directory)
    for sub in _subdirectories(directory) if sweep_subdirectories else ():  # fixtures/, calibration/ ...: swept when no writer is in them
        _sweep_if_idle(sub)


def _subdirectories(directory: str) -> List[str]:
    try:
        return [e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _sweep_if_idle(directory: str) -> None:
    if os.path.realpath(directory) in _held:
        _sweep(directory)
        return
    fd = _open_lock(directory)
    if fd < 0:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _sweep(directory)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def _sweep(directory: str) -> None:
    """Removes the temps and kept-aside files a killed writer left (only ours: `.<name>.<8>.tmp|old`)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if _TEMP_NAME.match(name) and name != JOURNAL_NAME:
            try:
                _unlink(os.path.join(directory, name))
            except OSError:
                pass
