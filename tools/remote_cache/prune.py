#!/usr/bin/env python3
"""Evicts the least recently accessed blobs of a Bazel HTTP cache store down to a size limit.

  python3 tools/remote_cache/prune.py --store DIR --max-size 20G [--access-log FILE] [--dry-run]

Bazel 4.2.3 never deletes anything from a remote cache; run this from cron on the cache host.
A blob's last access is the latest of its mtime (when it was written), its atime, and its last
GET or HEAD in nginx's access log (tools/remote_cache/nginx.conf.in writes "$msec $method $uri
$status ..."). The log matters: with relatime the kernel updates atime at most once a day, with
noatime never. Every run writes the logged times into the kept blobs' atimes, so the log can be
rotated after a prune without losing them.

Only store/ac/<sha256> and store/cas/<sha256> are candidates. An action result whose blobs were
evicted is a plain cache miss for Bazel: it rebuilds and uploads them again.

Exit codes: 0 done, 2 bad arguments or an unreadable store or log, 3 a blob could not be
deleted. Standard library only, so it runs on a cache host without tinyq's venv.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_IO = 3

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_HASH = re.compile(r"^[0-9a-f]{64}$")
_LOG_LINE = re.compile(r"^(\d+(?:\.\d+)?) (GET|HEAD) /((?:ac|cas)/[0-9a-f]{64}) 200\b")


class UsageError(Exception):
    pass


class DeleteError(Exception):
    pass


class Blob(NamedTuple):
    path: Path
    key: str  # "ac/<sha256>" or "cas/<sha256>", as in the URL
    size: int
    last_access: float


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
    if not m:
        raise UsageError(f"--max-size must be a byte count like 500M or 20G, not {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def read_access_log(path: Path) -> Dict[str, float]:
    """The last successful GET or HEAD per blob key; lines of any other shape are skipped."""
    last: Dict[str, float] = {}
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _LOG_LINE.match(line)
                if m:
                    t, key = float(m.group(1)), m.group(3)
                    if t > last.get(key, 0.0):
                        last[key] = t
    except OSError as e:
        raise UsageError(f"cannot read the access log {path}: {e.strerror}") from None
    return last


def scan(store: Path, logged: Dict[str, float]) -> List[Blob]:
    if not store.is_dir():
        raise UsageError(f"{store} is not a directory (the nginx store root, holding ac/ and cas/)")
    blobs = []
    for kind in ("ac", "cas"):
        folder = store / kind
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if not (_HASH.match(entry.name) and entry.is_file(follow_symlinks=False)):
                continue
            st = entry.stat(follow_symlinks=False)
            key = f"{kind}/{entry.name}"
            last = max(st.st_atime, st.st_mtime, logged.get(key, 0.0))
            blobs.append(Blob(Path(entry.path), key, st.st_size, last))
    return blobs


def choose_evictions(blobs: List[Blob], max_size: int) -> List[Blob]:
    """Least recently accessed first, until what is left fits in max_size."""
    total = sum(b.size for b in blobs)
    evict = []
    for blob in sorted(blobs, key=lambda b: (b.last_access, b.key)):
        if total <= max_size:
            break
        evict.append(blob)
        total -= blob.size
    return evict


def prune(store: Path, max_size: int, access_log: Optional[Path], dry_run: bool) -> str:
    logged = read_access_log(access_log) if access_log else {}
    blobs = scan(store, logged)
    evict = choose_evictions(blobs, max_size)
    before = sum(b.size for b in blobs)
    freed = sum(b.size for b in evict)
    summary = (
        f"prune: {len(blobs)} blobs, {before} bytes; {'would evict' if dry_run else 'evicted'} "
        f"{len(evict)} ({freed} bytes); {before - freed} bytes left, limit {max_size}"
    )
    if dry_run:
        return summary
    for blob in evict:
        try:
            blob.path.unlink()
        except FileNotFoundError:
            pass  # a concurrent prune got there first
        except OSError as e:
            raise DeleteError(f"cannot delete {blob.path}: {e.strerror}") from None
    # Keep the logged access times in the blobs themselves, for when the log is rotated.
    evicted = {b.key for b in evict}
    for blob in blobs:
        if blob.key in logged and blob.key not in evicted:
            try:
                st = blob.path.stat()
                if logged[blob.key] > st.st_atime:
                    os.utime(blob.path, (logged[blob.key], st.st_mtime))
            except OSError:
                pass  # gone meanwhile, or not ours to touch: the log still holds the time
    return summary


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, type=Path, help="the nginx store root (holds ac/ and cas/)")
    parser.add_argument("--max-size", required=True, help="bytes to keep at most: 500M, 20G, ...")
    parser.add_argument("--access-log", type=Path, help="nginx's access log in tools/remote_cache's format")
    parser.add_argument("--dry-run", action="store_true", help="report what would go, delete nothing")
    args = parser.parse_args(argv)  # exits 2 with a message on bad flags
    try:
        print(prune(args.store, parse_size(args.max_size), args.access_log, args.dry_run))
    except UsageError as e:
        print(f"prune: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"prune: error: {e.filename or args.store}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except DeleteError as e:
        print(f"prune: error: {e}", file=sys.stderr)
        return EXIT_IO
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
