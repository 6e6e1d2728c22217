"""No tool writes over a file it reads or a registry names, whatever the flag and the spelling (exit 9,
nothing written); a symlinked registry is written through and existing permissions are kept."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinyq.io.fileio import atomic_write_npz
from tinyq_testing import testutil

BIN = Path.cwd() / "python"
UNSAFE = 9


def run(tool, *args, cwd=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    return subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture
def tree(tmp_path):
    """A valid registry (fp32, dynamic and static models, sidecars, fixtures, calibration set) and a
    user's model beside it."""
    reg = testutil.make_tree(tmp_path)
    (tmp_path / "user.onnx").write_bytes(testutil.tiny_mlp(5))
    return reg


def named(reg):
    tiny = reg.parent
    return {"registry": reg, "sidecar": tiny / "m_dyn.json", "calibration set": tiny / "calibration" / "m_static.npz",
            "soak fixture": tiny / "fixtures" / "m_dyn.soak.npz", "pinned int8": tiny / "m_dyn.int8.onnx",
            "fp32 model": tiny / "m_fp32.onnx"}


@pytest.mark.parametrize("flag", ["--output", "--report-out"])
@pytest.mark.parametrize("what", ["registry", "sidecar", "calibration set", "soak fixture", "pinned int8", "fp32 model"])
def test_ptq_dynamic_never_writes_over_a_registry_file(tree, flag, what):
    target = named(tree)[what]
    spelled = Path(os.path.relpath(target, tree.parent.parent)).parent / ".." / target.parent.name / target.name
    before = snapshot(tree.parent.parent)
    r = run("ptq_dynamic", tree.parent.parent / "user.onnx", flag, spelled, cwd=tree.parent.parent)
    assert r.returncode == UNSAFE and "Traceback" not in r.stderr, r.stderr
    assert snapshot(tree.parent.parent) == before


def test_the_default_output_never_replaces_a_pinned_int8(tree):
    before = snapshot(tree.parent)
    r = run("ptq_dynamic", tree.parent / "m_dyn.onnx")
    assert r.returncode == UNSAFE and "pinned int8 artefact of 'm_dyn'" in r.stderr, r.stderr
    assert snapshot(tree.parent) == before


@pytest.mark.parametrize("flag, of", [("--out-json", "--fp32"), ("--out-md", "--int8"), ("--out-json", "--data")])
def test_measure_quant_drop_never_writes_over_its_inputs(tree, tmp_path, flag, of):
    tiny = tree.parent
    inputs = {"--fp32": tiny / "m_dyn.onnx", "--int8": tiny / "m_dyn.int8.onnx", "--data": tiny / "fixtures" / "m_dyn.soak.npz"}
    before = snapshot(tmp_path)
    r = run("measure_quant_drop", *[a for k, v in inputs.items() for a in (k, v)], flag, inputs[of])
    assert r.returncode == UNSAFE and "Traceback" not in r.stderr, r.stderr
    assert snapshot(tmp_path) == before


def test_measure_quant_drop_plots_dir_naming_a_file_is_refused(tree, tmp_path):
    tiny = tree.parent
    (tmp_path / "plots").write_text("a file")
    r = run("measure_quant_drop", "--fp32", tiny / "m_dyn.onnx", "--int8", tiny / "m_dyn.int8.onnx", "--data",
            tiny / "fixtures" / "m_dyn.soak.npz", "--plots-dir", tmp_path / "plots")
    assert r.returncode == 2 and "is a file; pass a directory" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "plots").read_text() == "a file"


def test_validate_registry_out_json_never_replaces_the_registry(tree):
    before = tree.read_bytes()
    for spelled in (tree, tree.parent / "." / "registry.json"):
        r = run("validate_registry", tree, "--out-json", spelled)
        assert r.returncode == UNSAFE and "OK" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    r = run("validate_registry", tree, "--out-json", tree.parent / "m_dyn.json")
    assert r.returncode == UNSAFE
    assert tree.read_bytes() == before


def test_per_ep_out_naming_a_file_is_refused(tree, tmp_path):
    (tmp_path / "results").write_text("a file")
    r = run("measure_quant_drop_per_ep", "--registry", tree, "--out", tmp_path / "results", "cpu")
    assert r.returncode == 2 and "is a file; pass a directory" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _register(src, reg, *args):
    return run("register_model", src, "--registry", reg, "--kind", "fr", *args)


def test_a_symlinked_registry_is_written_through_and_its_permissions_kept(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "a.onnx").write_bytes(testutil.tiny_mlp(1))
    assert _register(shared / "a.onnx", shared / "registry.json").returncode == 0
    (shared / "registry.json").chmod(0o600)
    team = tmp_path / "team"
    team.mkdir()
    (team / "registry.json").symlink_to(shared / "registry.json")
    (tmp_path / "b.onnx").write_bytes(testutil.tiny_mlp(2))
    r = _register(tmp_path / "b.onnx", team / "registry.json")
    assert r.returncode == 0, r.stderr
    assert (team / "registry.json").is_symlink()
    assert sorted(m["id"] for m in json.loads((shared / "registry.json").read_text())["models"]) == ["a", "b"]
    assert ((shared / "registry.json").stat().st_mode & 0o777) == 0o600
    assert (shared / "b.onnx").is_file(), "the model lands beside the registry it was registered in"


@pytest.mark.parametrize("side, message", [("[1, 2]", "is a JSON list, not an object"),
                                           ('{"input_semantics": ["x"]}', "input_semantics is a JSON list")])
def test_an_existing_sidecar_of_the_wrong_shape_is_refused(tmp_path, side, message):
    reg = tmp_path / "reg"
    reg.mkdir()
    (tmp_path / "m.onnx").write_bytes(testutil.tiny_mlp(1))
    (reg / "m.json").write_text(side)
    r = _register(tmp_path / "m.onnx", reg / "registry.json")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in reg.iterdir()) == ["m.json"]


def test_a_registry_nested_100000_deep_is_invalid_not_a_traceback(tmp_path):
    reg = tmp_path / "registry.json"
    reg.write_text("[" * 100000 + "]" * 100000)
    r = run("validate_registry", reg)
    assert r.returncode == 1 and "nested too deeply" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_report_name_that_is_not_utf8_is_written_and_printed(tmp_path):
    (tmp_path / "m.onnx").write_bytes(testutil.tiny_mlp(1))
    report = os.fsencode(tmp_path) + b"/r\xff.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    r = subprocess.run([os.fsencode(BIN / "ptq_dynamic"), os.fsencode(tmp_path / "m.onnx"), b"--report-out", report],
                       capture_output=True, env=env, timeout=300)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert os.path.isfile(report) and b"\\udcff" in r.stdout or b"\\xff" in r.stdout


def test_a_calibration_fifo_is_refused_without_blocking(tmp_path):
    (tmp_path / "m.onnx").write_bytes(testutil.tiny_mlp(1))
    os.mkfifo(tmp_path / "calib.npz")
    r = run("ptq_static", tmp_path / "m.onnx", "--calibration", tmp_path / "calib.npz")
    assert r.returncode == 2 and "FIFO" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("special", ["/dev/null", "fifo"])
def test_an_output_that_is_a_device_or_fifo_is_refused(tmp_path, special):
    (tmp_path / "m.onnx").write_bytes(testutil.tiny_mlp(1))
    if special == "fifo":
        os.mkfifo(tmp_path / "fifo")
        special = tmp_path / "fifo"
    r = run("ptq_dynamic", tmp_path / "m.onnx", "--output", special)
    assert r.returncode == UNSAFE and "not a regular file" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not Path(special).is_file()
