"""//python:build_shift_set: --check catches any changed byte, the soak fixture is never needed,
bad input exits 2 without a traceback."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BAZEL_TOOL = Path.cwd() / "python" / "build_shift_set"
MODELS = "nr_metric_v1,fr_patch_v1"


def run(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    if BAZEL_TOOL.is_file():
        cmd = [str(BAZEL_TOOL)]
    else:  # outside Bazel: PYTHONPATH=python python -m pytest python/build_shift_set_test.py
        cmd = [sys.executable, str(Path.cwd() / "python" / "build_shift_set.py")]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def model_dir(tmp_path):
    """A copy of model/tiny whose soak fixtures for MODELS are garbage: building must not need them."""
    root = tmp_path / "tiny"
    shutil.copytree(Path.cwd() / "model" / "tiny", root)
    for mid in MODELS.split(","):
        (root / "fixtures" / f"{mid}.soak.npz").write_bytes(b"garbage, never to be read")
    return root


def test_check_passes_on_the_committed_sets_without_the_soak_fixtures(model_dir, tmp_path):
    report = tmp_path / "r.json"
    r = run("--registry", model_dir / "registry.json", "--models", MODELS, "--check", "--report-out", report)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("byte-identical") == 2
    rep = json.loads(report.read_text())
    assert rep["schema"] == "tinyq-build-shift-set-report-v1" and rep["stale"] == [] and rep["check"]


def test_check_fails_on_a_changed_or_missing_file_and_a_build_repairs_it(model_dir):
    path = model_dir / "shift" / "nr_metric_v1.shift.npz"
    data = bytearray(path.read_bytes())
    data[-30] ^= 1
    path.write_bytes(bytes(data))
    (model_dir / "shift" / "fr_patch_v1.shift.npz").unlink()
    r = run("--registry", model_dir / "registry.json", "--models", MODELS, "--check")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "nr_metric_v1.shift.npz: differs" in r.stderr and "fr_patch_v1.shift.npz: missing" in r.stderr
    assert run("--registry", model_dir / "registry.json", "--models", MODELS).returncode == 0
    assert run("--registry", model_dir / "registry.json", "--models", MODELS, "--check").returncode == 0


@pytest.mark.parametrize("args, message", [
    (["--models", "no_such_model"], "not a zoo model"),
    (["--registry", "/nonexistent/registry.json"], "registry"),
    (["stray"], "unexpected arguments"),
])
def test_bad_input_exits_2_without_a_traceback(args, message):
    r = run(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
