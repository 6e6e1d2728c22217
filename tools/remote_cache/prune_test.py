"""prune.py on a fake cache store: least recently accessed blobs go first, down to the limit."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

PRUNE = Path("tools/remote_cache/prune.py")
NOW = time.time()
DAY = 86400.0


def blob(store, kind, name, size, accessed_days_ago, written_days_ago=30):
    """A blob of `size` bytes, written and last read (atime) the given number of days ago."""
    key = hashlib.sha256(name.encode()).hexdigest()
    path = store / kind / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - accessed_days_ago * DAY, NOW - written_days_ago * DAY))
    return path


def prune(*args):
    return subprocess.run([sys.executable, str(PRUNE), *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def store(tmp_path):
    s = tmp_path / "store"
    (s / ".tmp").mkdir(parents=True)
    return s


def test_evicts_least_recently_accessed_first_down_to_the_limit(store):
    oldest = blob(store, "cas", "oldest", 400, accessed_days_ago=9)
    old_ac = blob(store, "ac", "old", 100, accessed_days_ago=8)
    middle = blob(store, "cas", "middle", 400, accessed_days_ago=5)
    recent = blob(store, "cas", "recent", 400, accessed_days_ago=1)
    newest = blob(store, "ac", "newest", 100, accessed_days_ago=0.1)
    r = prune("--store", store, "--max-size", 950)
    assert r.returncode == 0, r.stderr
    # 1400 bytes over a 950 limit: the two least recently read go (500 bytes), nothing more.
    assert not oldest.exists() and not old_ac.exists()
    assert middle.exists() and recent.exists() and newest.exists()
    assert "evicted 2 (500 bytes); 900 bytes left" in r.stdout


def test_a_blob_written_recently_counts_as_accessed_then(store):
    rewritten = blob(store, "cas", "rewritten", 500, accessed_days_ago=20, written_days_ago=0.5)
    stale = blob(store, "cas", "stale", 500, accessed_days_ago=2, written_days_ago=20)
    assert prune("--store", store, "--max-size", 600).returncode == 0
    assert rewritten.exists() and not stale.exists()


def test_the_access_log_beats_a_stale_atime_and_is_kept_in_it(store, tmp_path):
    # Under noatime (or relatime within a day) the kernel never moved this blob's atime, but
    # nginx logged a GET an hour ago.
    read_by_nginx = blob(store, "cas", "read", 500, accessed_days_ago=10)
    untouched = blob(store, "cas", "untouched", 500, accessed_days_ago=3)
    log = tmp_path / "access.log"
    got = NOW - 3600
    log.write_text(
        f"{got - 10:.3f} PUT /cas/{read_by_nginx.name} 201 0\n"
        f"{got:.3f} GET /cas/{read_by_nginx.name} 200 500\n"
        f"{NOW:.3f} GET /cas/{untouched.name} 404 146\n"  # a miss is no access
        "garbage line\n"
    )
    r = prune("--store", store, "--max-size", 600, "--access-log", log)
    assert r.returncode == 0, r.stderr
    assert read_by_nginx.exists() and not untouched.exists()
    assert abs(read_by_nginx.stat().st_atime - got) < 1  # survives the log's rotation
    assert abs(read_by_nginx.stat().st_mtime - (NOW - 30 * DAY)) < 1


def test_under_the_limit_nothing_goes_and_only_blobs_are_candidates(store):
    kept = [blob(store, "ac", "a", 10, 50), blob(store, "cas", "b", 10, 60)]
    strays = [store / ".tmp" / "0000000001", store / "cas" / "not-a-hash", store / "README"]
    for p in strays:
        p.write_bytes(b"y" * 5000)
        os.utime(p, (NOW - 100 * DAY, NOW - 100 * DAY))
    r = prune("--store", store, "--max-size", "1K")
    assert r.returncode == 0 and "2 blobs, 20 bytes; evicted 0" in r.stdout
    assert all(p.exists() for p in kept + strays)
    r = prune("--store", store, "--max-size", 0)
    assert r.returncode == 0 and not any(p.exists() for p in kept) and all(p.exists() for p in strays)


def test_dry_run_deletes_nothing(store):
    paths = [blob(store, "cas", str(i), 100, i) for i in range(5)]
    r = prune("--store", store, "--max-size", 250, "--dry-run")
    assert r.returncode == 0 and "would evict 3 (300 bytes)" in r.stdout
    assert all(p.exists() for p in paths)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-size", "1G"], "is not a directory"),
        (["--max-size", "lots"], "--max-size must be a byte count"),
        (["--max-size", "1G", "--access-log", "/nonexistent/access.log"], "cannot read the access log"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2(store, tmp_path, args, message):
    target = tmp_path / "missing" if "is not a directory" in message else store
    r = prune("--store", target, *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_an_undeletable_blob_is_exit_code_3(store):
    if os.geteuid() == 0:
        pytest.skip("root deletes from a read-only directory")
    blob(store, "cas", "stuck", 100, 10)
    (store / "cas").chmod(0o555)
    try:
        r = prune("--store", store, "--max-size", 0)
    finally:
        (store / "cas").chmod(0o755)
    assert r.returncode == 3 and "cannot delete" in r.stderr and "Traceback" not in r.stderr
