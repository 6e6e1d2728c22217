"""tinyq.io.transaction's journal, read as data: what it may name, checked before any file is touched,
and the names of tinyq's temps (`.tinyq~<name>.<8 random>.tmp|old`), the mark no other program writes."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import Dict, List, Optional, Tuple

from tinyq.io import errors

JOURNAL_NAME = ".tinyq-journal.json"
SET_ASIDE_NAME = ".tinyq-journal.refused.json"  # where transaction.set_aside() moves a journal tinyq will not act on
MAX_JOURNAL_BYTES = 1024 * 1024
MAX_JOURNAL_FILES = 4096
TEMP_MARK = ".tinyq~"
TEMP_NAME = re.compile(r"^\.tinyq~.+\.[A-Za-z0-9_]{8}\.(tmp|old)$", re.S)  # what temp_prefix() begins
_TXID = re.compile(r"^[0-9a-f]{32}$")
_NAME_BYTES = 180  # of a target's name kept in its temp name, so a legal 255-byte name stays legal


def temp_prefix(target: str) -> Tuple[str, str]:
    """(directory, `.tinyq~<name>.`) for temps beside target, the name cut to fit: what _TEMP_NAME matches."""
    directory, name = os.path.split(target)
    return directory, f"{TEMP_MARK}{os.fsdecode(os.fsencode(name)[:_NAME_BYTES])}."


def _untrusted(path: str, why: str) -> errors.UntrustedJournal:
    directory = os.path.dirname(path)
    return errors.UntrustedJournal(
        f"{path}: {why}. tinyq acts on no journal it cannot trust, and touched nothing. If no tinyq tool is "
        f"writing in {directory}, look at the file, then set it aside: `tools/bazel run //python:validate_registry "
        f"-- --recover {os.path.join(directory, 'registry.json')}` renames it {SET_ASIDE_NAME} and leaves every "
        f"other file as it is (or move it out of the directory yourself)")


def read(directory: str) -> Optional[object]:
    """The parsed journal in directory, None when there is none. Read only when it is a regular
    file (not through a symlink, never blocking on a FIFO) of at most MAX_JOURNAL_BYTES."""
    path = os.path.join(directory, JOURNAL_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _untrusted(path, "a symbolic link, not a journal" if e.errno == errno.ELOOP
                         else f"cannot be read ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _untrusted(path, "not a regular file")
        data = os.read(fd, MAX_JOURNAL_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_JOURNAL_BYTES:
        raise _untrusted(path, f"larger than the {MAX_JOURNAL_BYTES} bytes a journal can be")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _untrusted(path, "not JSON") from None


def _bare_name(value: object) -> bool:
    """A file name in the journal's own directory: no separator, no NUL, not . or .., at most 255 bytes."""
    return (isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\0" not in value
            and len(os.fsencode(value)) <= 255)


def _directory_path(value: object) -> bool:
    return isinstance(value, str) and os.path.isabs(value) and "\0" not in value and os.path.normpath(value) == value


def _check_header(doc: object, path: str) -> None:
    if not isinstance(doc, dict) or not {"state", "txid", "files"} <= set(doc) <= {"state", "txid", "files", "coordinator", "participants"}:
        raise _untrusted(path, "not a tinyq journal (its fields are not state, txid, files and a coordinator or participants)")
    if doc["state"] not in ("commit", "rollback", "prepared") or not isinstance(doc["txid"], str) or not _TXID.match(doc["txid"]):
        raise _untrusted(path, "not a tinyq journal (state or txid)")
    if not isinstance(doc["files"], list) or len(doc["files"]) > MAX_JOURNAL_FILES:
        raise _untrusted(path, f"its files are not a list of at most {MAX_JOURNAL_FILES}")
    if doc["state"] == "prepared":
        ok = "participants" not in doc and _directory_path(doc.get("coordinator"))
    else:
        peers = doc.get("participants", [])
        ok = "coordinator" not in doc and isinstance(peers, list) and len(peers) <= 64 and all(_directory_path(p) for p in peers)
    if not ok:
        raise _untrusted(path, "its coordinator or participants are not absolute, normalised directory paths")


def entries(doc: object, directory: str) -> List[Dict[str, Optional[str]]]:
    """The journal's entries as paths in directory, after every check the module docstring lists;
    errors.UntrustedJournal, touching nothing, when one fails."""
    path = os.path.join(directory, JOURNAL_NAME)
    _check_header(doc, path)
    found, finals = [], set()
    for i, f in enumerate(doc["files"]):
        if not isinstance(f, dict) or set(f) != {"final", "tmp", "old"}:
            raise _untrusted(path, f"files[{i}] is not a final, tmp, old entry")
        final = f["final"]
        if not _bare_name(final) or final in (JOURNAL_NAME, SET_ASIDE_NAME) or final.startswith(TEMP_MARK) or final in finals:
            raise _untrusted(path, f"files[{i}].final {final!r} is not a file of this directory (a bare name, named once)")
        finals.add(final)
        prefix = temp_prefix(final)[1]
        for key in ("tmp", "old"):
            temp = f[key]
            if temp is not None and not (_bare_name(temp) and TEMP_NAME.match(temp) and temp.startswith(prefix)
                                         and temp.endswith("." + key)):
                raise _untrusted(path, f"files[{i}].{key} {temp!r} is not one of tinyq's temps of {final!r}")
        for name in (final, f["tmp"], f["old"]):
            _check_regular(path, os.path.join(directory, name) if name else None)
        found.append({k: (os.path.join(directory, v) if v else None) for k, v in f.items()})
    return found


def _check_regular(journal: str, path: Optional[str]) -> None:
    try:
        mode = os.lstat(path).st_mode if path else None
    except FileNotFoundError:
        return
    if mode is not None and not stat.S_ISREG(mode):
        raise _untrusted(journal, f"it names {path}, which is not a regular file (a symlink, directory or device)")
