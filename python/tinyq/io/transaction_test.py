"""tinyq.io.transaction: a multi-file write is one unit under SIGKILL at any step, one writer at a time."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tinyq.io import errors, fileio, locks, transaction

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
        monkeypatch.setenv(locks.LOCK_TIMEOUT_ENV, "0.3")
        start = time.monotonic()
        with pytest.raises(locks.LockTimeout, match="another tinyq tool is still writing there"):
            with transaction.locked(tmp_path):
                pass
        assert time.monotonic() - start < 10
    finally:
        holder.kill()
        holder.wait()


def test_only_tinyq_temps_are_swept(tmp_path):
    stale = [".tinyq~registry.json.abcd1234.tmp", ".tinyq~m.onnx.x_y_z123.old"]
    # Editors' swap files and backups, and other programs' temps, some matching what tinyq once swept.
    kept = ["notes.tmp", ".hidden", "registry.json", ".bashrc.20240101.old", ".registry.json.abcd1234.tmp",
            ".m.onnx.x_y_z123.old", ".registry.json.swp", "registry.json~", ".#registry.json", ".tinyq~notes.tmp"]
    for d in (tmp_path, tmp_path / "fixtures"):
        d.mkdir(exist_ok=True)
        for name in stale + kept:
            (d / name).write_bytes(b"")
    (tmp_path / ".tinyq~link.abcdefgh.tmp").symlink_to(tmp_path / "registry.json")  # not a file tinyq made
    with transaction.locked(tmp_path):
        pass
    assert sorted(p.name for p in (tmp_path / "fixtures").iterdir()) == sorted(kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["fixtures", ".tinyq~link.abcdefgh.tmp"])


def _plant(d, doc):
    (d / transaction.JOURNAL_NAME).write_text(doc if isinstance(doc, str) else json.dumps(doc))


def _doc(files, state="commit", **extra):
    return {"state": state, "txid": "0" * 32, "files": files, **extra}


@pytest.mark.parametrize("final", ["VICTIM", "../victim.txt", "sub/x", ".", "link", ".tinyq-journal.json"])
def test_a_planted_journal_is_refused_before_any_file_is_touched(tmp_path, final):
    d = tmp_path / "reg"
    d.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (d / "link").symlink_to(victim)
    (d / "sub").mkdir()
    (d / "sub" / "x").write_text("keep")
    _plant(d, _doc([{"final": str(victim) if final == "VICTIM" else final, "tmp": None, "old": None}]))
    with pytest.raises(errors.UntrustedJournal, match=r"\.tinyq-journal\.json: .*touched nothing"):
        with transaction.locked(d):
            pass
    assert victim.read_text() == "precious" and (d / "sub" / "x").read_text() == "keep" and (d / "link").is_symlink()
    assert (d / transaction.JOURNAL_NAME).exists(), "a refused journal stays where it is"


@pytest.mark.parametrize("tmp", ["notes.txt", ".tinyq~other.abcdefgh.tmp", ".registry.json.abcdefgh.tmp", "../x"])
def test_a_journal_tmp_must_be_a_tinyq_temp_of_its_own_file(tmp_path, tmp):
    (tmp_path / "registry.json").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    _plant(tmp_path, _doc([{"final": "registry.json", "tmp": tmp, "old": None}]))
    with pytest.raises(errors.UntrustedJournal, match="tinyq's temps"):
        transaction.recover(str(tmp_path))
    assert (tmp_path / "registry.json").read_text() == "old" and (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink", "not_json", "list", "wrong_types", "too_large",
                                  "bad_coordinator"])
def test_a_malformed_journal_fails_closed_at_once(tmp_path, kind):
    journal = tmp_path / transaction.JOURNAL_NAME
    if kind == "directory":
        journal.mkdir()
    elif kind == "fifo":
        os.mkfifo(journal)
    elif kind == "symlink":
        (tmp_path / "elsewhere.json").write_text(json.dumps(_doc([])))
        journal.symlink_to(tmp_path / "elsewhere.json")
    elif kind == "too_large":
        with open(journal, "wb") as f:
            f.truncate(170 * 1024 * 1024)  # sparse: read up to the cap, never whole
    else:
        _plant(tmp_path, {"not_json": "{", "list": [1, 2], "wrong_types": _doc("registry.json"),
                          "bad_coordinator": _doc([], state="prepared", coordinator="../up")}[kind])
    start = time.monotonic()
    with pytest.raises(errors.UntrustedJournal, match=str(journal)):
        with transaction.locked(tmp_path):
            pass
    assert time.monotonic() - start < 5
    assert errors.UntrustedJournal.exit_code == errors.EXIT_UNTRUSTED_JOURNAL


def test_set_aside_moves_only_a_refused_journal(tmp_path):
    (tmp_path / "registry.json").write_text("mine")
    _plant(tmp_path, _doc([{"final": "registry.json", "tmp": None, "old": None}], participants=["/etc"]))
    assert transaction.set_aside(tmp_path) is None, "a journal tinyq can act on stays, for the next run"
    _plant(tmp_path, _doc([{"final": "../registry.json", "tmp": None, "old": None}]))
    moved = transaction.set_aside(tmp_path)
    assert moved == str(tmp_path / transaction.SET_ASIDE_NAME) and not (tmp_path / transaction.JOURNAL_NAME).exists()
    with transaction.locked(tmp_path):
        pass
    assert (tmp_path / "registry.json").read_text() == "mine"


def test_a_directory_swapped_for_a_symlink_mid_write_does_not_redirect_it(tmp_path):
    """Renames, links and temps go through the locked directory's descriptor: replacing the
    directory's path with a symlink while the write runs cannot send the new file elsewhere."""
    d, moved, victim = tmp_path / "reg", tmp_path / "moved", tmp_path / "victim"
    d.mkdir()
    victim.mkdir()
    (d / "r.json").write_text("old")
    (victim / "r.json").write_text("precious")

    def swap(paths):
        os.rename(d, moved)
        d.symlink_to(victim)

    transaction.before_commit(swap)
    try:
        fileio.atomic_write_bytes(d / "r.json", b"new")
    finally:
        transaction._before_commit.remove(swap)
    assert (victim / "r.json").read_text() == "precious" and sorted(p.name for p in victim.iterdir()) == ["r.json"]
    assert (moved / "r.json").read_text() == "new" and sorted(p.name for p in moved.iterdir()) == ["r.json"]
