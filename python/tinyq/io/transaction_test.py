"""tinyq.io.transaction: a multi-file write is one unit under SIGKILL at any step, one writer at a time."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tinyq.io import transaction

WRITER = textwrap.dedent("""
    import sys
    from tinyq.io import fileio
    d, tag = sys.argv[1], sys.argv[2]
    fileio.atomic_write_all([(d + "/sub/fixture.npz", b"fixture " + tag.encode()),
                             (d + "/model.json", b"sidecar " + tag.encode()),
                             (d + "/gone.int8.onnx", None),
                             (d + "/registry.json", b"registry " + tag.encode())])
""")


def _write(d, tag, kill_at=None, extra_env=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("TINYQ_FAULT_KILL_AT", None)
    if kill_at:
        env["TINYQ_FAULT_KILL_AT"] = str(kill_at)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-c", WRITER, str(d), tag], env=env, capture_output=True, text=True, timeout=60)


def _state(d):
    files = {"sub/fixture.npz": b"fixture ", "model.json": b"sidecar ", "registry.json": b"registry "}
    tags = {(d / rel).read_bytes()[len(prefix):].decode() for rel, prefix in files.items()}
    gone = (d / "gone.int8.onnx").exists()
    return tags, gone


def _old(d):
    (d / "sub").mkdir(parents=True, exist_ok=True)
    for rel, prefix in (("sub/fixture.npz", b"fixture "), ("model.json", b"sidecar "), ("registry.json", b"registry ")):
        (d / rel).write_bytes(prefix + b"old")
    (d / "gone.int8.onnx").write_bytes(b"int8")


def _leftovers(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob(".*"))


def test_a_kill_at_every_step_leaves_old_or_new_after_recovery(tmp_path):
    killed = 0
    for step in range(1, 100):
        d = tmp_path / f"k{step}"
        _old(d)
        r = _write(d, "new", kill_at=step)
        if r.returncode == 0:
            break
        assert r.returncode == -signal.SIGKILL, r.stderr
        killed += 1
        with transaction.locked(d):  # the next run: finishes or sweeps what the kill left
            pass
        with transaction.locked(d / "sub"):
            pass
        tags, gone = _state(d)
        assert (tags, gone) in (({"old"}, True), ({"new"}, False)), f"kill at step {step}: a mix {tags}, int8 present={gone}"
        assert _leftovers(d) == [], f"kill at step {step} left {_leftovers(d)}"
    assert killed >= 10, "the hook should stop the write at every stage"
    assert _state(d) == ({"new"}, False)


def test_a_journal_left_by_a_kill_is_replayed_before_a_reader_reads(tmp_path):
    for step in range(1, 100):
        d = tmp_path / f"k{step}"
        _old(d)
        if _write(d, "new", kill_at=step).returncode == 0:
            break
        if (d / transaction.JOURNAL_NAME).exists():
            with transaction.locked(d, shared=True):  # a reader (registry.check) takes the shared lock
                assert _state(d) == ({"new"}, False)
            return
    pytest.fail("no step left a journal behind")


def test_two_and_four_writers_are_serialised(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from tinyq.io import fileio, transaction
        d = Path(sys.argv[1])
        with transaction.locked(d):
            names = (d / "list.txt").read_text().split() if (d / "list.txt").exists() else []
            time.sleep(0.05)
            fileio.atomic_write_bytes(d / "list.txt", " ".join(names + [sys.argv[2]]).encode())
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for n in (2, 4):
        d = tmp_path / f"w{n}"
        d.mkdir()
        procs = [subprocess.Popen([sys.executable, "-c", script, str(d), f"{w}-{i}"], env=env)
                 for i in range(3) for w in range(n)]
        assert all(p.wait(timeout=120) == 0 for p in procs)
        assert sorted((d / "list.txt").read_text().split()) == sorted(f"{w}-{i}" for i in range(3) for w in range(n))


def test_a_held_lock_times_out_with_a_clear_message(tmp_path, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tinyq.io import transaction\n"
                               "with transaction.locked(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(30)",
                               str(tmp_path)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv(transaction.LOCK_TIMEOUT_ENV, "0.3")
        start = time.monotonic()
        with pytest.raises(transaction.LockTimeout, match="another tinyq tool is still writing there"):
            with transaction.locked(tmp_path):
                pass
        assert time.monotonic() - start < 10
    finally:
        holder.kill()
        holder.wait()


def test_only_tinyq_temps_are_swept(tmp_path):
    stale = [".registry.json.abcd1234.tmp", ".m.onnx.x_y_z123.old"]
    kept = ["notes.tmp", ".hidden", "registry.json"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"")
    with transaction.locked(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
