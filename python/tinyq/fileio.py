"""File primitives every tinyq tool shares: streamed sha256 and atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, List, Sequence, Tuple, Union

PathLike = Union[str, os.PathLike]


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, streamed."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _unlink(path: PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _staged(path: Path, data: bytes) -> str:
    """A fsynced temp file beside path holding data; the caller renames or removes it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _keep_aside(path: Path) -> Union[str, None]:
    """A hard link to the file at path under a temp name, or None when there is no file."""
    if not path.exists():
        return None
    backup = tempfile.mktemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)
    os.link(path, backup)
    return backup


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Writes data to a temp file beside path, fsyncs it, then renames it over path.

    A crash or error leaves either the old file or none, never a partial one.
    """
    atomic_write_all([(path, data)])


def atomic_write_all(files: Sequence[Tuple[PathLike, bytes]]) -> None:
    """Writes every (path, data) or none of them.

    Every file is staged in a temp file beside its path first; only when all are staged are
    they renamed into place, each old file kept aside until the last rename succeeds. An error
    at any point puts every old file back and removes every new one.
    """
    paths = [Path(p) for p, _ in files]
    staged: List[str] = []
    done: List[Tuple[Path, Union[str, None]]] = []  # (path, its old file kept aside, or None)
    try:
        for path, (_, data) in zip(paths, files):
            staged.append(_staged(path, data))
        for path, tmp in zip(paths, staged):
            backup = _keep_aside(path)
            try:
                os.replace(tmp, path)
            except BaseException:
                if backup is not None:
                    _unlink(backup)
                raise
            done.append((path, backup))
    except BaseException:
        for path, backup in reversed(done):
            if backup is not None:
                os.replace(backup, path)
            else:
                _unlink(path)
        for tmp in staged:
            _unlink(tmp)
        raise
    for _, backup in done:
        if backup is not None:
            _unlink(backup)


def dumps_json(obj: Any) -> str:
    """The one JSON layout tinyq writes: sorted keys, two-space indent, trailing newline."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


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
