"""//python:ptq_dynamic and //python:ptq_static end to end: outputs, repairs, refusals, reports."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyq import quantize_test, testutil

DYNAMIC = Path.cwd() / "python" / "ptq_dynamic"
STATIC = Path.cwd() / "python" / "ptq_static"


def run(tool, *args, cwd=None, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    env.update(env_extra or {})
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)


def loads(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture
def mlp(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(testutil.tiny_mlp(0, n_in=6, hidden=32))
    return path


def test_dynamic_writes_int8_beside_the_input_with_a_report(mlp, tmp_path):
    report = tmp_path / "r.json"
    r = run(DYNAMIC, mlp, "--per-channel", "--report-out", report)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "model.int8.onnx"
    loads(out)
    rep = json.loads(report.read_text())
    assert rep["schema"] == "tinyq-ptq-dynamic-report-v1" and rep["output"] == str(out)
    assert rep["int8_bytes"] == out.stat().st_size and rep["fp32_bytes"] == mlp.stat().st_size
    assert rep["size_ratio"] > 1 and rep["larger_than_fp32"] is False
    assert rep["settings"]["per_channel"] is True and rep["settings"]["encoding"] in ("weight_only", "dynamic")
    assert rep["quantize_wall_time_s"] > 0 and rep["run_provenance"]["outputs"][0]["path"] == str(out)


def test_dynamic_repairs_stale_value_info(mlp):
    quantize_test.stale_value_info(mlp)
    r = run(DYNAMIC, mlp, "--encoding=dynamic")
    assert r.returncode == 0, r.stderr
    assert "repaired value_info_dropped" in r.stdout
    loads(mlp.with_name("model.int8.onnx"))


def test_dynamic_repairs_moved_external_data(mlp, tmp_path):
    d = tmp_path / "ext"
    d.mkdir()
    onnx.save(onnx.load(str(mlp)), str(d / "a.onnx"), save_as_external_data=True, location="a.onnx.data", size_threshold=0)
    (d / "a.onnx").rename(d / "b.onnx")
    (d / "a.onnx.data").rename(d / "b.onnx.data")
    r = run(DYNAMIC, d / "b.onnx")
    assert r.returncode == 0, r.stderr
    assert "repaired external_data_location" in r.stdout
    loads(d / "b.int8.onnx")


def test_relative_paths_resolve_against_the_callers_directory(mlp, tmp_path):
    r = run(DYNAMIC, "model.onnx", "--output", "sub.int8.onnx", cwd="/", env_extra={"BUILD_WORKING_DIRECTORY": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    loads(tmp_path / "sub.int8.onnx")


def test_fp16_is_refused_and_nothing_is_written(tmp_path):
    w = numpy_helper.from_array(np.ones((6, 1), np.float16), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "h",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n", 1])], initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "h.onnx"))
    r = run(DYNAMIC, tmp_path / "h.onnx")
    assert r.returncode == 2 and "fp16 model" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.onnx"]


def test_missing_input_and_bad_flags_exit_2(tmp_path):
    assert run(DYNAMIC, tmp_path / "none.onnx").returncode == 2
    assert run(DYNAMIC).returncode == 2
    assert run(DYNAMIC, tmp_path / "none.onnx", "--encoding=int4").returncode == 2


def test_an_artefact_not_smaller_than_fp32_is_flagged_loudly(tmp_path):
    # Weights too small to quantise: no int8 encoding can shrink this model.
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])], initializer=[w])
    src = tmp_path / "s.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    report = tmp_path / "r.json"
    r = run(DYNAMIC, src, "--report-out", report)
    assert r.returncode == 3
    assert "is NOT SMALLER than its fp32 source" in r.stderr and "will not register it" in r.stderr
    assert json.loads(report.read_text())["larger_than_fp32"] is True


def calibration(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_static_writes_qdq_with_calibration_in_the_report(mlp, tmp_path):
    calib = calibration(tmp_path / "c.npz", features=np.random.default_rng(0).random((64, 6), dtype=np.float32))
    report = tmp_path / "r.json"
    r = run(STATIC, mlp, "--calibration", calib, "--calibrate-method=percentile", "--report-out", report)
    assert r.returncode == 0, r.stderr
    out = onnx.load(str(tmp_path / "model.int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in out.graph.node}
    rep = json.loads(report.read_text())
    assert rep["schema"] == "tinyq-ptq-static-report-v1"
    assert rep["calibration"]["samples"] == 64 and rep["calibration"]["input_names"] == ["features"]
    assert len(rep["calibration"]["sha256"]) == 64 and rep["settings"]["calibrate_method"] == "percentile"
    assert rep["settings"]["format"] == "QDQ"


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"feats": np.zeros((4, 6), np.float32)}, "missing key 'features'"),
        ({"features": np.zeros((4, 6), np.float32), "x": np.zeros((4, 6), np.float32)}, "extra key 'x'"),
        ({"features": np.zeros((4, 5), np.float32)}, "dimension 1 is 5"),
        ({"features": np.zeros((4, 6), np.float64)}, "dtype float64"),
        ({"features": np.full((4, 6), np.nan, np.float32)}, "NaN or infinite"),
        ({"features": np.zeros((0, 6), np.float32)}, "no samples"),
    ],
    ids=["missing_name", "extra_key", "shape", "dtype", "non_finite", "empty"],
)
def test_static_refuses_each_bad_calibration(mlp, tmp_path, arrays, message):
    r = run(STATIC, mlp, "--calibration", calibration(tmp_path / "bad.npz", **arrays))
    assert r.returncode == 2 and message in r.stderr and str(tmp_path / "bad.npz") in r.stderr
    assert not (tmp_path / "model.int8.onnx").exists()


def test_static_defaults_to_the_registrys_calibration_set(tmp_path):
    reg = testutil.make_tree(tmp_path)
    r = run(STATIC, reg.parent / "m_static.onnx", "--registry", reg, "--output", tmp_path / "o.onnx", "--report-out", tmp_path / "r.json")
    # An 8-unit MLP is too small for QDQ to pay off: written, flagged, and exit 3.
    assert r.returncode == 3 and "NOT SMALLER" in r.stderr, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["calibration"]["path"] == str(reg.parent / "calibration" / "m_static.npz")
    r = run(STATIC, reg.parent / "m_dyn.onnx", "--registry", reg)
    assert r.returncode == 2 and "has no quant_calibration_set" in r.stderr
