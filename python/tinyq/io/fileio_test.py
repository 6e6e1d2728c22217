"""tinyq.io.fileio: streamed hashes and atomic writes that never leave partial files."""

import hashlib
import os

import pytest

from tinyq.io import errors as cli, fileio, transaction


def test_sha256_file_matches_hashlib(tmp_path):
    p = tmp_path / "blob"
    data = os.urandom(3 * 1024 * 1024 + 7)
    p.write_bytes(data)
    assert fileio.sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_atomic_write_json_layout(tmp_path):
    p = tmp_path / "r.json"
    fileio.atomic_write_json(p, {"b": 1, "a": [1, 2]})
    text = p.read_text()
    assert text == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def _names(d):
    return sorted(x.name for x in d.iterdir())


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    p.write_text("old\n")
    real_replace = os.replace

    def boom(src, dst, **at):  # every rename into place fails; the journal's and the rollback's work
        if os.path.basename(dst) == transaction.JOURNAL_NAME or src.endswith(".old"):
            return real_replace(src, dst, **at)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(cli.WriteFailed, match="No space left"):
        fileio.atomic_write_bytes(p, b"new\n")
    assert p.read_text() == "old\n"
    assert _names(tmp_path) == ["r.json"]


def test_nan_is_refused_not_written(tmp_path):
    p = tmp_path / "r.json"
    with pytest.raises(ValueError):
        fileio.atomic_write_json(p, {"x": float("nan")})
    assert not p.exists() and list(tmp_path.iterdir()) == []


def test_write_all_writes_every_file_or_none(tmp_path, monkeypatch):
    a, b = tmp_path / "a.onnx", tmp_path / "b.json"
    a.write_bytes(b"old a")
    fileio.atomic_write_all([(a, b"new a"), (b, b"new b")])
    assert a.read_bytes() == b"new a" and b.read_bytes() == b"new b"

    real_replace = os.replace
    calls = []

    def second_fails(src, dst, **at):
        if os.path.basename(dst) != transaction.JOURNAL_NAME:
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
        real_replace(src, dst, **at)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(cli.WriteFailed):
        fileio.atomic_write_all([(a, b"newer a"), (b, b"newer b")])
    monkeypatch.undo()
    assert a.read_bytes() == b"new a" and b.read_bytes() == b"new b"
    assert _names(tmp_path) == ["a.onnx", "b.json"]


def test_write_all_removes_new_files_when_a_later_one_fails(tmp_path):
    a, missing_dir = tmp_path / "a.onnx", tmp_path / "none" / "r.json"
    with pytest.raises(cli.WriteFailed, match="none/r.json"):
        fileio.atomic_write_all([(a, b"a"), (missing_dir, b"r")])
    assert _names(tmp_path) == []


def test_a_symlink_is_written_through_to_its_target(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "registry.json"
    target.write_text("old")
    link = tmp_path / "registry.json"
    link.symlink_to(target)
    fileio.atomic_write_bytes(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_existing_permissions_are_kept(tmp_path):
    p = tmp_path / "secret.json"
    p.write_text("old")
    p.chmod(0o600)
    fileio.atomic_write_bytes(p, b"new")
    assert (p.stat().st_mode & 0o777) == 0o600
    fresh = tmp_path / "fresh.json"
    fileio.atomic_write_bytes(fresh, b"x")
    assert (fresh.stat().st_mode & 0o777) == 0o644


def test_a_255_byte_name_is_written(tmp_path):
    p = tmp_path / ("m" * 250 + ".onnx")
    fileio.atomic_write_bytes(p, b"x")
    assert p.read_bytes() == b"x"


def test_none_removes_a_file_in_the_same_unit(tmp_path):
    a, b = tmp_path / "a.int8.onnx", tmp_path / "r.json"
    a.write_bytes(b"int8")
    fileio.atomic_write_all([(a, None), (b, b"fp32 now")])
    assert not a.exists() and b.read_bytes() == b"fp32 now"
