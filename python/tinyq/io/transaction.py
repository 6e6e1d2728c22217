"""Multi-file writes that land as one unit, one writer per directory, and recovery after a kill.

A write of several files (model, sidecar, fixtures, registry) goes:

1. lock every target directory (an advisory flock on the directory itself, bounded wait);
2. stage each new file as a fsynced temp beside its target, keep each old one aside (hard link):
   tinyq's temps, `.tinyq~<name>.<8 random>.tmp|old`, a mark no other program writes;
3. write a journal `.tinyq-journal.json` "prepared" in every target directory but the last, then
   the last one's, "commit": the commit point;
4. rename every temp into place (or unlink, for a deletion), fsync the directories;
5. remove the prepared journals, then the commit journal, then the kept-aside files.

A journal is data, never an order. It names only files in its own directory (bare names: no
separator, no `..`), a tmp or old only as one of tinyq's temps of its own file, and each file it
names must be a regular file or absent, never a symlink. A journal that breaks a rule, is not a
regular file, passes MAX_JOURNAL_BYTES or is not a journal at all is refused before any file is
touched: errors.UntrustedJournal (exit 13), naming it. set_aside() (`validate_registry
--recover`) moves such a journal out of the way and touches nothing else.

Recovery, under the lock, before anything is read: a commit journal rolls its own directory
forward, then recovers each directory it names that holds a prepared journal of the same
transaction (the same random id); a prepared journal rolls forward when its coordinator's journal
commits the same transaction, and back otherwise (the commit journal is removed only after every
prepared one). Either way the next run sees the old state or the new one, never a mix. Stale temps
(a kill before 3, or after 5) are swept under the lock: tinyq's only. An error during 4 (the
process still alive) rolls back from the kept-aside files.

TINYQ_FAULT_KILL_AT=N kills the process with SIGKILL at the Nth write or rename step: the hook the
fault-injection tests use to stop a tool at every step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import stat
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from tinyq.io import errors, journal, locks
from tinyq.io.journal import JOURNAL_NAME, SET_ASIDE_NAME

_held: Dict[str, int] = {}  # the real directories this process holds, each with its descriptor (-1: none)
_steps = [0]


def _fault_point() -> None:
    """The fault-injection hook: SIGKILL at the step TINYQ_FAULT_KILL_AT names."""
    at = os.environ.get("TINYQ_FAULT_KILL_AT")
    if not at:
        return
    _steps[0] += 1
    if _steps[0] == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


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
    journal_path = os.path.join(key, JOURNAL_NAME)
    fd = locks.open_lock(key)
    if fd >= 0:
        try:
            locks.acquire(fd, key, shared and not os.path.lexists(journal_path))
        except BaseException:
            os.close(fd)
            raise
    _held[key] = fd
    try:
        if fd >= 0 and shared and os.path.lexists(journal_path):
            locks.acquire(fd, key, False)  # a killed writer's journal: finish it exclusively
        if fd >= 0 or not os.path.lexists(journal_path):
            recover(key, sweep_subdirectories)
        yield
    finally:
        _held.pop(key, None)
        if fd >= 0:
            os.close(fd)  # releases the flock


def set_aside(directory) -> Optional[str]:
    """Under the directory's lock, and without recovering: renames a journal that tinyq refuses to
    act on to SET_ASIDE_NAME (never over an earlier one) and touches nothing else. A journal tinyq
    can act on stays, for the next run to finish. The new path, or None when nothing was moved."""
    key = os.path.realpath(directory)
    path = os.path.join(key, JOURNAL_NAME)
    fd = locks.open_lock(key)
    if fd < 0 or not os.path.lexists(path):
        if fd >= 0:
            os.close(fd)
        return None
    try:
        locks.acquire(fd, key, False)
        try:
            journal.entries(journal.read(key), key)
            return None
        except errors.UntrustedJournal:
            pass
        target, n = os.path.join(key, SET_ASIDE_NAME), 1
        while os.path.lexists(target):
            n += 1
            target = os.path.join(key, f".tinyq-journal.refused.{n}.json")
        os.rename(path, target)
        _fsync_dir(key)
        return target
    finally:
        os.close(fd)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _at(path: str) -> Tuple[Optional[int], str]:
    """(the descriptor of the locked directory holding path, its bare name), so that a rename, link
    or unlink in it cannot be sent elsewhere by a symlink swapped into the path; (None, path) when
    the directory is not held."""
    fd = _held.get(os.path.dirname(path), -1)
    return (fd, os.path.basename(path)) if fd >= 0 else (None, path)


def _exists(path: str) -> bool:
    fd, name = _at(path)
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _rename(src: str, dst: str) -> None:
    """src over dst, both in one directory, relative to its descriptor."""
    fd, src_name = _at(src)
    _, dst_name = _at(dst)
    os.replace(src_name, dst_name, src_dir_fd=fd, dst_dir_fd=fd)


def _unlink(path: str) -> None:
    fd, name = _at(path)
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass


_TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _temp_name(target: str, suffix: str) -> str:
    """A fresh temp path beside target: `.tinyq~<name>.<8 random>.<suffix>` (the caller creates it
    exclusively, and draws again on EEXIST)."""
    directory, prefix = journal.temp_prefix(target)
    return os.path.join(directory, prefix + "".join(secrets.choice(_TEMP_CHARS) for _ in range(8)) + f".{suffix}")


def real_target(path) -> str:
    """Where a write to path lands: through a symlink to its target, so a shared registry keeps
    receiving entries."""
    return os.path.realpath(os.fspath(path))


def _stage(target: str, data: bytes) -> str:
    """A fsynced temp beside target holding data, with the old file's permissions (0644 when new),
    created relative to the locked directory's descriptor."""
    while True:
        tmp = _temp_name(target, "tmp")
        fd, name = _at(tmp)
        try:
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(out, "wb") as f:
            _fault_point()
            f.write(data)
            f.flush()
            _copy_mode(target, f.fileno())
            os.fsync(f.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _stage_named(target: str, data: bytes) -> str:
    try:
        return _stage(target, data)
    except OSError as e:  # name the file being written, not its temp
        raise OSError(e.errno, e.strerror, target) from None


def _copy_mode(target: str, out: int) -> None:
    fd, name = _at(target)
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        os.fchmod(out, 0o644)
        return
    os.fchmod(out, stat.S_IMODE(st.st_mode))
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.fchown(out, st.st_uid, st.st_gid)


def _keep_aside(target: str) -> Optional[str]:
    """A hard link to the file at target under a temp name, or None when there is no file."""
    if not _exists(target):
        return None
    _fault_point()
    fd, name = _at(target)
    while True:
        old = _temp_name(target, "old")
        try:
            os.link(name, _at(old)[1], src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            return old
        except FileExistsError:
            continue


def _journal(state: str, txid: str, entries: Sequence[Dict[str, Optional[str]]], **peers) -> Dict[str, object]:
    """A journal for one directory: its own entries, by bare name."""
    files = [{k: (os.path.basename(v) if v else None) for k, v in e.items()} for e in entries]
    return {"state": state, "txid": txid, "files": files, **peers}


def _write_journal(directory: str, doc: Dict[str, object]) -> None:
    path = os.path.join(directory, JOURNAL_NAME)
    tmp = _stage(path, json.dumps(doc, sort_keys=True).encode())
    _fault_point()
    _rename(tmp, path)
    _fsync_dir(directory)


def _remove_journal(directory: str) -> None:
    _unlink(os.path.join(directory, JOURNAL_NAME))
    _fsync_dir(directory)


_before_commit: List[Callable[[Sequence[str]], None]] = []


def before_commit(check: Callable[[Sequence[str]], None]) -> None:
    """Registers a check that every later write runs under its locks, immediately before the commit,
    with the paths as the caller named them; an exception from it aborts the write (nothing written)."""
    _before_commit.append(check)


def _recheck(files: Sequence[Tuple[str, Optional[bytes]]], named: Optional[Sequence[str]]) -> None:
    """Under the locks: each path still resolves where it did when the write began (a symlink that
    appeared since is refused), the target is a regular file or absent, and the registered checks pass."""
    for (target, _), path in zip(files, named or [t for t, _ in files]):
        if real_target(path) != target:
            raise errors.UnsafeOutput(f"{path}: a symlink appeared at the path while the tool ran (it now leads to "
                                      f"{real_target(path)}); nothing was written")
        if os.path.lexists(target) and not stat.S_ISREG(os.lstat(target).st_mode):
            raise errors.UnsafeOutput(f"{target}: is no longer a regular file; nothing was written")
    for check in _before_commit:
        check(list(named or [t for t, _ in files]))


def write_all(files: Sequence[Tuple[str, Optional[bytes]]], named: Optional[Sequence[str]] = None) -> None:
    """Writes (or, for None, removes) every target or none, as the module docstring says.
    Targets are real paths (see real_target), named the paths they were resolved from; the caller
    holds no lock or holds these."""
    if not files:
        return
    targets = [t for t, _ in files]
    dirs = sorted({os.path.dirname(t) for t in targets})
    coordinator = os.path.dirname(targets[-1])
    participants = [d for d in dirs if d != coordinator]
    with contextlib.ExitStack() as stack:
        for d in dirs:
            stack.enter_context(locked(d))
        entries: List[Dict[str, Optional[str]]] = []
        try:
            for target, data in files:
                entries.append({"final": target, "tmp": _stage_named(target, data) if data is not None else None, "old": None})
            for e in entries:
                e["old"] = _keep_aside(e["final"])
            _recheck(files, named)
        except BaseException:
            _discard(entries)
            raise
        txid = secrets.token_hex(16)
        try:
            for d in participants:
                _write_journal(d, _journal("prepared", txid, _in(entries, d), coordinator=coordinator))
            _write_journal(coordinator, _journal("commit", txid, _in(entries, coordinator), participants=participants))
            _roll_forward(entries)
        except BaseException:
            if _txid_at(coordinator) == txid:  # committed: undo from the kept-aside files
                _write_journal(coordinator, _journal("rollback", txid, _in(entries, coordinator), participants=participants))
                _roll_back(entries)
            else:
                _discard(entries)
            _finish(participants, coordinator, entries)
            raise
        _finish(participants, coordinator, entries)


def _in(entries, directory: str) -> List[Dict[str, Optional[str]]]:
    return [e for e in entries if os.path.dirname(e["final"]) == directory]


def _txid_at(directory: str) -> Optional[str]:
    try:
        doc = journal.read(directory)
    except errors.UntrustedJournal:
        return None
    return doc.get("txid") if isinstance(doc, dict) else None


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
        elif _exists(e["tmp"]):
            _rename(e["tmp"], e["final"])
    for d in sorted({os.path.dirname(e["final"]) for e in entries}):
        _fsync_dir(d)


def _roll_back(entries) -> None:
    for e in entries:
        if e["old"] and _exists(e["old"]):
            _rename(e["old"], e["final"])
        elif not e["old"] and e["tmp"] and not _exists(e["tmp"]):
            _unlink(e["final"])  # it was new, and already renamed into place
        if e["tmp"]:
            _unlink(e["tmp"])
    for d in sorted({os.path.dirname(e["final"]) for e in entries}):
        _fsync_dir(d)


def _finish(participants: Sequence[str], coordinator: str, entries) -> None:
    """The prepared journals go first, the commit journal last: while it stands, a participant
    still holding a prepared journal learns from it that the transaction committed."""
    for d in participants:
        _fault_point()
        _remove_journal(d)
    _fault_point()
    _remove_journal(coordinator)
    for e in entries:
        if e["old"]:
            _fault_point()
            _unlink(e["old"])


def recover(directory: str, sweep_subdirectories: bool = True) -> None:
    """Finishes an interrupted update (the caller holds the lock), then sweeps stale temps: in
    the directory's immediate subdirectories too, each when no writer holds it."""
    _recover_journal(directory)
    _sweep(directory)
    for sub in _subdirectories(directory) if sweep_subdirectories else ():  # fixtures/, calibration/ ...
        _recover_if_idle(sub)


def _recover_journal(directory: str) -> None:
    doc = journal.read(directory)
    if doc is None:
        return
    entries = journal.entries(doc, directory)
    state = doc["state"]
    if state == "prepared":
        state = _coordinator_state(doc, directory)
    if state == "commit":
        _roll_forward(entries)
    else:
        _roll_back(entries)
    for participant in doc.get("participants", []):
        if _txid_at(participant) == doc["txid"]:
            with locked(participant, sweep_subdirectories=False):  # its own journal decides, as its coordinator's says
                pass
    _remove_journal(directory)
    for e in entries:
        if e["old"]:
            _unlink(e["old"])


def _coordinator_state(doc: Dict[str, object], directory: str) -> str:
    """What a prepared journal's transaction became: "commit" or "rollback" as its coordinator's
    journal says; "rollback" when that journal is gone or is another transaction's (a commit
    journal outlives every prepared one, so the transaction never committed)."""
    try:
        coordinator = journal.read(doc["coordinator"])
    except errors.UntrustedJournal as e:
        raise errors.UntrustedJournal(f"{e} (the coordinator of {os.path.join(directory, JOURNAL_NAME)})") from None
    if isinstance(coordinator, dict) and coordinator.get("txid") == doc["txid"] and coordinator.get("state") in ("commit", "rollback"):
        return coordinator["state"]
    return "rollback"


def _subdirectories(directory: str) -> List[str]:
    try:
        return [e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _recover_if_idle(directory: str) -> None:
    """A subdirectory's interrupted update finished and its stale temps swept, unless a writer
    holds it (it recovers the directory itself)."""
    key = os.path.realpath(directory)
    if key in _held:
        _recover_journal(key)
        _sweep(key)
        return
    fd = locks.open_lock(key)
    if fd < 0:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return
    _held[key] = fd
    try:
        _recover_journal(key)
        _sweep(key)
    finally:
        _held.pop(key, None)
        os.close(fd)


def _sweep(directory: str) -> None:
    """Removes the temps and kept-aside files a killed writer left: tinyq's only, regular files
    named `.tinyq~<name>.<8>.tmp|old`. An editor's backup or another program's temp is never touched."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            if journal.TEMP_NAME.match(name) and stat.S_ISREG(os.lstat(path).st_mode):
                _unlink(path)
        except OSError:
            pass
