"""//cc:tinyq_resolve on a shipped zoo model: the verified int8 path, and what a flipped byte does."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tinyq.registry import registry

TOOL = Path.cwd() / "cc" / "tinyq_resolve"
REG = registry.load(Path("model/tiny/registry.json"))


def resolve(model, *flags):
    # A timeout: a FIFO in place of a file once blocked the tool for ever.
    r = subprocess.run([str(TOOL), str(model), *flags], capture_output=True, text=True, timeout=30)
    fields = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    return r.returncode, fields, r.stderr


@pytest.mark.parametrize("entry", REG.quantised(), ids=lambda e: e.id)
def test_shipped_model_resolves_to_its_verified_int8(entry):
    code, out, err = resolve(entry.onnx)
    assert code == 0, out
    assert out["path"].endswith(f"{entry.id}.int8.onnx") and out["mode"] == entry.quant_mode
    assert out["sha256"] == entry.int8_sha256 and out["verdict"] == "verified"


def test_a_size_only_entry_resolves_to_its_int8_by_default():
    """The resolver serves what the registry pins, speed or size alike: a size-only artefact
    (quant_purpose size; the zoo's MLPs) is the int8 file. A model whose only int8 is slower than
    fp32 stays fp32 in the registry instead (ptq_auto's default; docs/user-guide.md)."""
    size_only = [e for e in REG.quantised() if e.raw.get("quant_purpose") == "size"]
    assert size_only, "the zoo has size-only entries (the MLPs)"
    for entry in size_only:
        code, out, _ = resolve(entry.onnx)
        assert code == 0 and out["path"].endswith(f"{entry.id}.int8.onnx") and out["mode"] == "dynamic", out


@pytest.fixture
def copied(tmp_path):
    entry = REG.get("vmaf_tiny_v3")
    for p in (entry.onnx, entry.sidecar, entry.int8_onnx):
        shutil.copyfile(p, tmp_path / p.name)
    return tmp_path, entry


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_int8_byte_is_refused_or_falls_back(copied):
    d, entry = copied
    model = d / entry.onnx.name
    assert resolve(model, f"--jail={d}")[0] == 0
    flip_byte(d / entry.int8_onnx.name)
    code, out, _ = resolve(model, "--policy=fail-closed", f"--jail={d}")
    assert code == 1 and out["verdict"] == "refused (hash_mismatch)" and "refusing it (FAIL_CLOSED)" in out["reason"]
    code, out, _ = resolve(model, "--policy=fallback-fp32", f"--jail={d}")
    assert code == 0 and out["path"] == str(model) and out["mode"] == "fp32" and out["requested_mode"] == "dynamic"
    assert out["verdict"] == "verified (fell back)" and "fell back to the verified fp32 model" in out["reason"]
    assert out["sha256"] == entry.sha256


def test_missing_int8_and_a_bad_fp32(copied):
    d, entry = copied
    model = d / entry.onnx.name
    (d / entry.int8_onnx.name).unlink()
    assert resolve(model)[1]["verdict"] == "refused (int8_missing)"
    flip_byte(model)
    code, out, _ = resolve(model, "--policy=fallback-fp32")
    assert code == 1 and out["verdict"] == "refused (hash_mismatch)"


def test_int8_linked_from_outside_the_jail(copied, tmp_path_factory):
    d, entry = copied
    outside = tmp_path_factory.mktemp("outside") / entry.int8_onnx.name
    shutil.move(d / entry.int8_onnx.name, outside)
    (d / entry.int8_onnx.name).symlink_to(outside)
    assert resolve(d / entry.onnx.name, f"--jail={d}")[1]["verdict"] == "refused (path_escape)"
    assert resolve(d / entry.onnx.name)[0] == 0  # no jail asked for: the link is followed and verified


def test_usage_errors_exit_2():
    assert resolve("a.onnx", "--policy=maybe")[0] == 2
    assert subprocess.run([str(TOOL)], capture_output=True).returncode == 2


def test_a_fifo_in_place_of_a_file_is_refused_promptly(copied):
    d, entry = copied
    model = d / entry.onnx.name
    for victim in (entry.sidecar, entry.int8_onnx):
        for p in (entry.sidecar, entry.int8_onnx):
            (d / p.name).unlink()
            shutil.copyfile(p, d / p.name)
        (d / victim.name).unlink()
        os.mkfifo(d / victim.name)
        victim = victim.name
        code, out, _ = resolve(model, f"--jail={d}")  # subprocess's timeout fails the test should it block
        assert code == 1 and out["verdict"] == "refused (io_error)", out
        assert f"{d / victim}: not a regular file (a FIFO)" in out["reason"], out


def test_a_directory_in_place_of_the_sidecar_is_refused(copied):
    d, entry = copied
    (d / entry.sidecar.name).unlink()
    (d / entry.sidecar.name).mkdir()
    code, out, _ = resolve(d / entry.onnx.name)
    assert code == 1 and "not a regular file (a directory)" in out["reason"], out


def test_an_onnx_field_climbing_out_is_refused(copied):
    d, entry = copied
    side = json.loads((d / entry.sidecar.name).read_text())
    for onnx in ("../../etc/x.onnx", "/etc/x.onnx"):
        side["onnx"] = onnx
        (d / entry.sidecar.name).write_text(json.dumps(side))
        code, out, _ = resolve(d / entry.onnx.name, "--policy=fallback-fp32")
        assert code == 1 and out["verdict"] == "refused (onnx_path_escape)" and "field 'onnx'" in out["reason"], out


def test_an_interrupted_registry_update_fails_closed_with_exit_3(copied):
    d, entry = copied
    model = d / entry.onnx.name
    assert resolve(model)[0] == 0
    (d / ".tinyq-journal.json").write_text("{}")
    for flags in ((), (f"--jail={d}",), ("--policy=fallback-fp32",)):
        code, out, err = resolve(model, *flags)
        assert code == 3 and out["verdict"] == "refused (update_interrupted)" and "path" not in out, out
        want = (f"{d}: an update of this registry was interrupted (.tinyq-journal.json); "
                "run `bazel run //python:validate_registry` to finish it, then retry")
        assert err.splitlines() == [f"tinyq_resolve: {want}"], err
    (d / ".tinyq-journal.json").unlink()
    assert resolve(model)[0] == 0


def test_help_documents_exit_3():
    r = subprocess.run([str(TOOL), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "3 an update of the registry was interrupted" in r.stdout and ".tinyq-journal.json" in r.stdout


def test_bytes_to_hands_out_the_verified_bytes_and_never_replaces_a_file(copied, tmp_path_factory):
    d, entry = copied
    model = d / entry.onnx.name
    out_dir = tmp_path_factory.mktemp("out")
    code, out, err = resolve(model, f"--jail={d}", f"--bytes-to={out_dir / 'm.onnx'}")
    assert code == 0 and out["sha256"] == entry.int8_sha256, err
    assert (out_dir / "m.onnx").read_bytes() == (d / entry.int8_onnx.name).read_bytes()
    assert out["bytes"] == f"{(out_dir / 'm.onnx').stat().st_size} verified bytes written to {out_dir / 'm.onnx'}"
    keep = out_dir / "keep.txt"
    keep.write_text("mine")
    code, _, err = resolve(model, f"--bytes-to={keep}")
    assert code == 1 and "File exists" in err and keep.read_text() == "mine", err
    r = subprocess.run([str(TOOL), str(model), "--bytes-to=-"], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == (d / entry.int8_onnx.name).read_bytes()
    assert b"verdict: verified" in r.stderr  # the report moves to stderr
    flip_byte(d / entry.int8_onnx.name)
    r = subprocess.run([str(TOOL), str(model), "--bytes-to=-"], capture_output=True, timeout=30)
    assert r.returncode == 1 and r.stdout == b"" and b"hash_mismatch" in r.stderr
