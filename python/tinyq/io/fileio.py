"""File primitives every tinyq tool shares: streamed sha256 and atomic writes."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Optional, Sequence, Tuple, Union

PathLike = Union[str, os.PathLike]


class UnreadableFile(Exception):
    """An input that is not a regular file tinyq can open; str() says why (the caller names the
    file and raises its own error type)."""


def not_regular(mode: int) -> str:
    """Why a file of this st_mode is not read: "is a directory; ...", "is a FIFO (named pipe), ..."."""
    if stat.S_ISDIR(mode):
        return "is a directory; pass a file"
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"))
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return f"is {kind}, not a regular file; tinyq reads only regular files: pass (or copy the data to) a regular file"


def file_problem(path: PathLike) -> Optional[str]:
    """Why path cannot be read as an input file ("file not found", "is a directory; ...", "is a
    FIFO (named pipe), not a regular file; ..."), or None for a regular file. Only stat: nothing is
    opened."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "file not found"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    return None if stat.S_ISREG(st.st_mode) else not_regular(st.st_mode)


def open_regular(path: PathLike) -> BinaryIO:
    """path opened for binary reading, only when it is a regular file: checked with stat before
    opening (opening some devices acts), then opened non-blocking and checked again with fstat, so a
    FIFO swapped in between never blocks. Raises UnreadableFile saying why otherwise."""
    problem = file_problem(path)
    if problem:
        raise UnreadableFile(problem)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise UnreadableFile(f"cannot be read ({e.strerror or e})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnreadableFile(not_regular(mode))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(path: PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes (open_regular). OSError naming the file
    and why otherwise."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:  # a 1 TiB sparse file is refused by its size, never read
                raise OSError(errno.EFBIG, f"{size} bytes, larger than the {max_bytes} bytes tinyq reads of it",
                              os.fspath(path))
            raw = f.read(max_bytes + 1)
    except UnreadableFile as e:
        missing = str(e) == "file not found"
        raise (FileNotFoundError if missing else OSError)(errno.ENOENT if missing else errno.EINVAL, str(e),
                                                          os.fspath(path)) from None
    if len(raw) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than the {max_bytes} bytes tinyq reads of it", os.fspath(path))
    return raw


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, streamed."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Writes data to a temp file beside path, fsyncs it, then renames it over path.

    A crash or error leaves either the old file or none, never a partial one.
    """
    atomic_write_all([(path, data)])


def atomic_write_all(files: Sequence[Tuple[PathLike, Optional[bytes]]]) -> None:
    """Writes every (path, data), or removes it where data is None, as one unit (tinyq.io.transaction):
    after an error or a kill at any point, the next run sees every old file or every new one.

    A symlink is written through to its target; an existing file keeps its permissions. Raises
    errors.WriteFailed (every old file in place) or errors.Busy (another writer held the lock too long).
    """
    from tinyq.io import errors, transaction

    _fault_symlink()
    targets = [(transaction.real_target(p), data) for p, data in files]
    if len({t for t, _ in targets}) != len(targets):
        raise ValueError(f"one file named twice in one write: {[os.fspath(p) for p, _ in files]}")
    try:
        transaction.write_all(targets, named=[os.fspath(p) for p, _ in files])  # locks.LockTimeout: an errors.Busy
    except OSError as e:
        where = e.filename or (targets[-1][0] if targets else "?")
        raise errors.WriteFailed(f"cannot write {where}: {e.strerror or e}; nothing was written, every old file is in place") from None


def _fault_symlink() -> None:
    """The race hook the symlink tests use: TINYQ_FAULT_SYMLINK=LINK=TARGET makes LINK a symlink to
    TARGET just before a write begins, as an attacker racing the tool would after its checks."""
    spec = os.environ.get("TINYQ_FAULT_SYMLINK")
    if spec and "=" in spec:
        link, target = spec.split("=", 1)
        if not os.path.lexists(link):
            os.symlink(target, link)


def dumps_json(obj: Any) -> str:
    """The one JSON layout tinyq writes: sorted keys, two-space indent, trailing newline."""
    text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8 (surrogate escapes): \u escapes, still valid JSON
        text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False) + "\n"
    return text


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_bytes(path, dumps_json(obj).encode("utf-8"))


def npz_bytes(arrays: "dict") -> bytes:
    """A compressed .npz whose bytes depend only on the arrays (numpy's savez stamps the time).

    Entries are written in sorted key order with a fixed timestamp, so equal data gives equal
    files and equal sha256s.
    """
    import io
    import zipfile

    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, member.getvalue(), compresslevel=9)
    return buf.getvalue()


def atomic_write_npz(path: PathLike, arrays: "dict") -> None:
    atomic_write_bytes(path, npz_bytes(arrays))
