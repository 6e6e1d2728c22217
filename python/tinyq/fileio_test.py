"""tinyq.fileio: streamed hashes and atomic writes that never leave partial files."""

import hashlib
import os

import pytest

from tinyq import fileio


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


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "r.json"
    p.write_text("old\n")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        fileio.atomic_write_bytes(p, b"new\n")
    assert p.read_text() == "old\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]


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

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError):
        fileio.atomic_write_all([(a, b"newer a"), (b, b"newer b")])
    monkeypatch.undo()
    assert a.read_bytes() == b"new a" and b.read_bytes() == b"new b"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.onnx", "b.json"]


def test_write_all_removes_new_files_when_a_later_one_fails(tmp_path):
    a, missing_dir = tmp_path / "a.onnx", tmp_path / "none" / "r.json"
    with pytest.raises(FileNotFoundError):
        fileio.atomic_write_all([(a, b"a"), (missing_dir, b"r")])
    assert list(tmp_path.iterdir()) == []
