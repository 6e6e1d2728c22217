"""A registry written for the reference toolkit validates unchanged, and tinyq_resolve reads its
sidecars: `name` and no `id`, `onnx_opset`, a finer kind (shot_detector), absent fields."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np

from tinyq.io.fileio import atomic_write_npz, sha256_file
from tinyq_testing import testutil

VALIDATE = Path.cwd() / "python" / "validate_registry"
RESOLVE = Path.cwd() / "cc" / "tinyq_resolve"


def run(tool, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, env=env)


def write(path, obj):
    path.write_text(json.dumps(obj, indent=2) + "\n")


def reference_tree(d: Path) -> Path:
    """Files shaped like the reference toolkit's model/tiny/ (its registry.json and sidecars)."""
    models = []
    for i, name in enumerate(["lpips_sq", "transnet_v2", "learned_filter_v1", "vmaf_tiny_v3"]):
        (d / f"{name}.onnx").write_bytes(testutil.tiny_mlp(i, n_in=6, hidden=32))
        models.append({"id": name if name != "lpips_sq" else "lpips_sq_v1", "kind": "fr", "onnx": f"{name}.onnx", "opset": 17,
                       "sha256": sha256_file(d / f"{name}.onnx"), "license": "BSD-3-Clause-Plus-Patent",
                       "notes": "reference entry"})
    models[1].update(kind="nr", smoke=True)
    models[2].update(kind="filter", quant_mode="dynamic", quant_accuracy_budget_plcc=0.01,
                     sigstore_bundle="learned_filter_v1.onnx.sigstore.json", description="residual filter",
                     license_url="https://example.invalid/LICENSE")
    (d / "learned_filter_v1.int8.onnx").write_bytes(testutil.int8_of((d / "learned_filter_v1.onnx").read_bytes()))
    models[2]["int8_sha256"] = sha256_file(d / "learned_filter_v1.int8.onnx")
    (d / "fixtures").mkdir()
    atomic_write_npz(d / "fixtures" / "learned_filter_v1.soak.npz", {"features": np.zeros((4, 6), np.float32)})
    write(d / "registry.json", {"$schema": "./registry.schema.json", "schema_version": 1, "models": models})
    # Sidecars as the reference wrote them.
    write(d / "lpips_sq.json", {"input_name": "features", "kind": "fr", "name": "vmaf_tiny_lpips_sq_v1", "notes": "no id",
                                "onnx_opset": 17, "output_name": "score"})
    write(d / "transnet_v2.json", {"channels": 3, "frame_window": 100, "id": "transnet_v2", "input_name": "features",
                                   "kind": "shot_detector", "name": "vmaf_tiny_transnet_v2_placeholder_v0", "onnx": "transnet_v2.onnx",
                                   "opset": 17, "output_name": "score", "smoke": True})
    write(d / "learned_filter_v1.json", {"id": "learned_filter_v1", "kind": "filter", "onnx": "learned_filter_v1.onnx",
                                         "opset": 17, "sha256": models[2]["sha256"], "notes": "no quant_mode: fp32 to a loader"})
    write(d / "vmaf_tiny_v3.json", {"id": "vmaf_tiny_v3", "kind": "fr", "onnx": "vmaf_tiny_v3.onnx", "opset": 17,
                                    "sha256": models[3]["sha256"], "input_name": "features", "input_shape": [-1, 6],
                                    "output_name": "vmaf", "output_shape": [-1], "features": ["adm2"] * 6,
                                    "input_mean": [0.5] * 6, "input_std": [1.0] * 6, "arch": "mlp_medium", "n_params": 769,
                                    "training": {"seed": 0}, "feature_mean": [0.0] * 6})
    return d / "registry.json"


def test_reference_registry_validates_unchanged(tmp_path):
    reg = reference_tree(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    r = run(VALIDATE, reg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.json")} == before


def test_tinyq_resolve_reads_reference_sidecars(tmp_path):
    reg = reference_tree(tmp_path)
    r = run(RESOLVE, reg.parent / "lpips_sq.onnx")
    assert r.returncode == 1 and "no pinned sha256" in r.stdout and "schema_error" not in r.stdout, r.stdout
    r = run(RESOLVE, reg.parent / "learned_filter_v1.onnx")
    assert r.returncode == 0 and "mode: fp32" in r.stdout and "verdict: verified" in r.stdout, r.stdout
    r = run(RESOLVE, reg.parent / "transnet_v2.onnx", "--policy=fallback-fp32")
    assert "schema_error" not in r.stdout, r.stdout


def test_reference_quantised_entries_without_a_soak_fixture_warn_and_fail_only_under_strict(tmp_path):
    """The reference toolkit's quantised entries have no soak fixture (tinyq's gate judges on it):
    the registry stays valid, each such entry is a warning naming the fix, and --strict fails."""
    reg = reference_tree(tmp_path)
    (tmp_path / "fixtures" / "learned_filter_v1.soak.npz").unlink()
    r = run(VALIDATE, reg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 warnings" in r.stdout
    line = next(l for l in r.stderr.splitlines() if "[fixture_missing]" in l)
    assert line.startswith("warning: ") and "learned_filter_v1" in line and "--soak-data" in line
    strict = run(VALIDATE, reg, "--strict")
    assert strict.returncode == 1 and "[fixture_missing]" in strict.stderr and "INVALID" in strict.stderr
