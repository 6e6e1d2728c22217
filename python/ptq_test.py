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

from tinyq.io.fileio import sha256_file
from tinyq_testing import testutil

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
    testutil.stale_value_info(mlp)
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


def test_static_writes_qdq_with_calibration_in_the_report(tmp_path):
    mlp = tmp_path / "model.onnx"
    mlp.write_bytes(testutil.tiny_mlp(0, n_in=6, hidden=64))  # big enough for QDQ's scales to pay off
    calib = calibration(tmp_path / "c.npz", features=np.random.default_rng(0).random((64, 6), dtype=np.float32))
    report = tmp_path / "r.json"
    r = run(STATIC, mlp, "--calibration", calib, "--calibrate-method=percentile", "--report-out", report)
    assert r.returncode == 0, r.stderr
    out = onnx.load(str(tmp_path / "model.int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in out.graph.node}
    rep = json.loads(report.read_text())
    assert rep["schema"] == "tinyq-ptq-static-report-v1"
    assert rep["calibration"]["samples"] == 64 and rep["calibration"]["input_names"] == ["features"]
    assert rep["calibration"]["batch"] == 32 and rep["settings"]["weight_symmetric"] is True
    assert rep["settings"]["activation_type"] == "uint8" and rep["settings"]["weight_type"] == "int8"
    assert rep["weights"]["weights_quantised_fraction"] == 1.0 and rep["weights"]["ops_left_fp32"] == []
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
    # ptq_static has no --encoding flag: its advice names the tool that has one.
    assert "`ptq_dynamic --encoding=weight_only`" in r.stderr and "Try --encoding" not in r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["calibration"]["path"] == str(reg.parent / "calibration" / "m_static.npz")
    r = run(STATIC, reg.parent / "m_dyn.onnx", "--registry", reg)
    assert r.returncode == 2 and "has no quant_calibration_set" in r.stderr


# --- a tool never destroys or half-writes ------------------------------------------------------


def snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())}


@pytest.mark.parametrize("tool", [DYNAMIC, STATIC], ids=["dynamic", "static"])
def test_output_that_is_the_input_is_refused(mlp, tmp_path, tool):
    calib = calibration(tmp_path / "c.npz", features=np.zeros((4, 6), np.float32))
    before = snapshot(tmp_path)
    (tmp_path / "link.onnx").symlink_to(mlp)
    for out in (mlp, tmp_path / "link.onnx", *([calib] if tool == STATIC else [])):
        r = run(tool, mlp, "--calibration", calib, "--output", out) if tool == STATIC else run(tool, mlp, "--output", out)
        assert r.returncode == 9 and "never overwrites its input" in r.stderr and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "link.onnx").unlink()
    assert snapshot(tmp_path) == before


def test_output_that_is_a_registered_fp32_model_is_refused(tmp_path):
    reg = testutil.make_tree(tmp_path)
    target = reg.parent / "m_fp32.onnx"
    before = target.read_bytes()
    r = run(DYNAMIC, reg.parent / "m_dyn.onnx", "--output", target)
    assert r.returncode == 9 and "is the fp32 model of 'm_fp32'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run(STATIC, reg.parent / "m_static.onnx", "--registry", reg, "--output", target)
    assert r.returncode == 9 and "is the fp32 model of 'm_fp32'" in r.stderr
    assert target.read_bytes() == before


@pytest.mark.parametrize("flag", ["--output", "--report-out"])
def test_missing_directory_is_a_clean_exit_2_and_nothing_is_written(mlp, tmp_path, flag):
    r = run(DYNAMIC, mlp, flag, tmp_path / "no" / "such" / "file")
    assert r.returncode == 2 and "does not exist" in r.stderr and flag in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_artefact_and_report_are_written_both_or_neither(mlp, tmp_path):
    (tmp_path / "r.json").mkdir()  # a report path that cannot be a file
    r = run(DYNAMIC, mlp, "--report-out", tmp_path / "r.json")
    assert r.returncode == 2 and "is a directory" in r.stderr
    assert not (tmp_path / "model.int8.onnx").exists()
    r = run(DYNAMIC, mlp, "--report-out", tmp_path / "ok.json")
    assert r.returncode == 0 and (tmp_path / "model.int8.onnx").exists() and (tmp_path / "ok.json").exists()
    rep = json.loads((tmp_path / "ok.json").read_text())
    assert rep["run_provenance"]["outputs"][0]["sha256"] == sha256_file(tmp_path / "model.int8.onnx")


@pytest.mark.parametrize("tool", [DYNAMIC, STATIC], ids=["dynamic", "static"])
def test_help_exits_0(tool):
    r = run(tool, "--help")
    assert r.returncode == 0 and "Usage:" in r.stdout and "--output" in r.stdout and "Exit codes" in r.stdout, r.stderr


@pytest.mark.parametrize("tool", [DYNAMIC, STATIC], ids=["dynamic", "static"])
def test_an_artefact_that_quantises_nothing_is_refused(tmp_path, tool):
    # Every weight is under the 16 elements worth a scale (weight_only) or there is none at all (static).
    src = tmp_path / "s.onnx"
    src.write_bytes(testutil.tiny_mlp(0, n_in=2, hidden=4))
    calib = calibration(tmp_path / "c.npz", features=np.random.default_rng(0).random((8, 2), dtype=np.float32))
    graph = helper.make_graph([helper.make_node("Relu", ["features"], ["score"])], "g",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 2])])
    if tool == STATIC:
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    args = ["--calibration", calib] if tool == STATIC else ["--encoding=weight_only"]
    r = run(tool, src, *args, "--report-out", tmp_path / "r.json")
    assert r.returncode == 4 and "quantises no weight; nothing was written" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "s.int8.onnx").exists() and not (tmp_path / "r.json").exists()


def test_static_calibrates_a_fixed_batch_1_model_one_sample_at_a_time(tmp_path):
    src = tmp_path / "b1.onnx"
    onnx.save(testutil.small_cnn(batch=1), str(src))
    calib = calibration(tmp_path / "c.npz", x=np.random.default_rng(0).random((48, 1, 16, 16), dtype=np.float32))
    r = run(STATIC, src, "--calibration", calib, "--report-out", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "calibrated on 48 samples" in r.stdout and "1 at a time" in r.stdout
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["calibration"]["samples"] == 48 and rep["calibration"]["batch"] == 1
    testutil.x64_precise_and_default_sessions((tmp_path / "b1.int8.onnx").read_bytes())


def test_report_states_the_weights_quantised_and_what_stays_fp32(tmp_path):
    # quantize_dynamic has no integer ConvTranspose: the report says so, and how to quantise it.
    w_up = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4, 2, 2)).astype(np.float32), "w_up")
    w_c = numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 1, 3, 3)).astype(np.float32), "w_c")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w_c"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("ConvTranspose", ["c", "w_up"], ["y"], strides=[2, 2])], "up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], initializer=[w_up, w_c])
    src = tmp_path / "up.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    r = run(DYNAMIC, src, "--encoding=dynamic", "--report-out", tmp_path / "r.json")
    assert r.returncode in (0, 3), r.stderr
    assert "left in fp32: ConvTranspose x1 (128 elements)" in r.stdout and "--encoding=weight_only quantises it" in r.stdout
    weights = json.loads((tmp_path / "r.json").read_text())["weights"]
    assert weights["weight_elements_int8"] == 72 and weights["weight_elements_fp32"] == 128
    assert weights["weights_quantised_fraction"] == pytest.approx(72 / 200)
    assert [o["op"] for o in weights["ops_left_fp32"]] == ["ConvTranspose"]
    r = run(DYNAMIC, src, "--encoding=weight_only", "--output", tmp_path / "wo.onnx")
    assert "weights quantised: 100.0%" in r.stdout, r.stdout


def test_a_default_output_name_too_long_for_the_file_system_is_a_usage_error(tmp_path):
    src = tmp_path / ("m" * 247 + ".onnx")  # 252 bytes: a legal name, whose default output (257 bytes) is not
    src.write_bytes(testutil.tiny_mlp(0, n_in=6, hidden=32))
    r = run(DYNAMIC, src)
    assert r.returncode == 2, r.stderr
    assert "--output" in r.stderr and "257 bytes, over the 255" in r.stderr and "pass a shorter --output" in r.stderr
    assert "Traceback" not in r.stderr and sorted(p.name for p in tmp_path.iterdir()) == [src.name]


@pytest.mark.parametrize("tool", [DYNAMIC, STATIC], ids=["dynamic", "static"])
@pytest.mark.parametrize("target", ["registry.json", "m_fp32.onnx", "elsewhere.bin"])
def test_a_symlink_that_appears_at_the_output_after_the_check_is_refused(tmp_path, tool, target):
    """The race: the output is checked before the work, a symlink replaces it while the tool runs
    (TINYQ_FAULT_SYMLINK makes it appear just before the write, every time)."""
    reg = testutil.make_tree(tmp_path)
    out_dir = reg.parent / "out"
    out_dir.mkdir()
    (reg.parent / "elsewhere.bin").write_bytes(b"mine")
    files = lambda: {p: p.read_bytes() for p in sorted(reg.parent.rglob("*")) if p.is_file() and not p.is_symlink()}
    before = files()
    out = out_dir / "t.int8.onnx"
    extra = ["--registry", reg] if tool == STATIC else []
    r = run(tool, reg.parent / "m_static.onnx", *extra, "--output", out,
            env_extra={"TINYQ_FAULT_SYMLINK": f"{out}=../{target}"})
    assert r.returncode == 9, r.stdout + r.stderr
    assert "a symlink appeared" in r.stderr and "nothing was written" in r.stderr and "Traceback" not in r.stderr
    out.unlink()
    assert files() == before


@pytest.mark.parametrize("tool", [DYNAMIC, STATIC], ids=["dynamic", "static"])
def test_an_opset_11_model_is_converted_not_refused(tmp_path, tool):
    """A pretrained model cannot be re-exported: opset 11 is converted (onnx.version_converter), its
    fp32 outputs checked bit-identical, and the report says so."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((6, 128)).astype(np.float32), rng.standard_normal((128, 1)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["features", "w1"], ["h"]), helper.make_node("Clip", ["h", "lo", "hi"], ["c"]),
             helper.make_node("MatMul", ["c", "w2"], ["score"])]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")]
    fp32 = testutil.save_graph(tmp_path / "old.onnx", nodes, [testutil.floats("features", ["n", 6])],
                               [testutil.floats("score", ["n", 1])], inits, opset=11)
    np.savez(tmp_path / "calib.npz", features=rng.standard_normal((64, 6)).astype(np.float32))
    report = tmp_path / "r.json"
    r = run(tool, fp32, "--report-out", report, *(["--calibration", tmp_path / "calib.npz"] if tool == STATIC else []))
    assert r.returncode == 0, r.stderr
    assert "opset 11 -> 17 (onnx.version_converter); fp32 outputs bit-identical" in r.stdout + r.stderr
    assert [x["code"] for x in json.loads(report.read_text())["repairs"]][0] == "opset_converted"
    int8 = onnx.load(str(tmp_path / "old.int8.onnx"))
    assert [o.version for o in int8.opset_import if o.domain == ""] == [17]


def masked_model(path, nan_weight=False):
    """MatMul, Max with a -inf scalar (magika's mask), Add of a -inf mask, Relu, MatMul: constants that
    are not weights. nan_weight: a NaN in the first MatMul's weight instead, which is one."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((6, 128)).astype(np.float32), rng.standard_normal((128, 1)).astype(np.float32)
    if nan_weight:
        w1[0, 0] = np.nan
    mask = np.zeros(128, np.float32)
    mask[::16] = -np.inf
    nodes = [helper.make_node("MatMul", ["features", "w1"], ["h"], name="mm1"),
             helper.make_node("Constant", [], ["floor"], value=numpy_helper.from_array(np.array(-np.inf, np.float32))),
             helper.make_node("Max", ["h", "floor"], ["m"], name="max"),
             helper.make_node("Add", ["m", "mask"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["score"], name="mm2")]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(mask, "mask")]
    return testutil.save_graph(path, nodes, [testutil.floats("features", ["n", 6])], [testutil.floats("score", ["n", 1])],
                               inits)


@pytest.mark.parametrize("tool", [DYNAMIC, STATIC], ids=["dynamic", "static"])
def test_a_constant_that_is_not_a_weight_may_be_infinite(tmp_path, tool):
    fp32 = masked_model(tmp_path / "masked.onnx")
    x = np.random.default_rng(1).standard_normal((64, 6)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", features=x)
    report = tmp_path / "r.json"
    r = run(tool, fp32, "--report-out", report, *(["--calibration", tmp_path / "calib.npz"] if tool == STATIC else []))
    assert r.returncode == 0, r.stderr
    repairs = {x["code"]: x["detail"] for x in json.loads(report.read_text())["repairs"]}
    assert repairs["nonfinite_constants_kept"].startswith("2 constant(s) hold NaN or infinite values"), repairs
    int8 = tmp_path / "masked.int8.onnx"
    graph = onnx.load(str(int8)).graph
    assert any(np.isneginf(numpy_helper.to_array(t)).sum() == 8 for t in graph.initializer)  # the mask, unquantised
    want, got = loads(fp32).run(None, {"features": x})[0], loads(int8).run(None, {"features": x})[0]
    assert np.isfinite(got).all() and np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.99


def test_a_weight_that_is_not_finite_is_still_refused(tmp_path):
    fp32 = masked_model(tmp_path / "bad.onnx", nan_weight=True)
    r = run(DYNAMIC, fp32)
    assert r.returncode == 2 and "weight 'w1' holds 1 NaN or infinite values of 768" in r.stderr, r.stderr


@pytest.mark.parametrize("tool", [DYNAMIC, STATIC], ids=["dynamic", "static"])
def test_weights_held_in_constant_nodes_are_quantised(tmp_path, tool):
    """paddle2onnx keeps every weight in a Constant node; onnxruntime's quantisers only see initialisers."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((6, 128)).astype(np.float32), rng.standard_normal((128, 1)).astype(np.float32)
    const = lambda name, a: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(a))  # noqa: E731
    nodes = [const("w1", w1), const("b1", np.zeros(128, np.float32)), const("w2", w2),
             helper.make_node("MatMul", ["features", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["score"])]
    fp32 = testutil.save_graph(tmp_path / "paddle.onnx", nodes, [testutil.floats("features", ["n", 6])],
                               [testutil.floats("score", ["n", 1])])
    np.savez(tmp_path / "calib.npz", features=rng.standard_normal((64, 6)).astype(np.float32))
    report = tmp_path / "r.json"
    r = run(tool, fp32, "--report-out", report, *(["--calibration", tmp_path / "calib.npz"] if tool == STATIC else []))
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    assert {x["code"]: x["detail"] for x in rep["repairs"]}["constant_weights_to_initialisers"] == (
        "2 weights (896 elements) held in Constant nodes moved to initialisers")
    assert rep["weights"]["weights_quantised_fraction"] == 1.0, rep["weights"]


def test_a_calibration_set_with_targets_is_accepted_as_register_model_accepts_it(mlp, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "labelled.npz", features=rng.random((64, 6), dtype=np.float32), target=rng.random(64, dtype=np.float32))
    r = run(STATIC, mlp, "--calibration", tmp_path / "labelled.npz", "--output", tmp_path / "t.int8.onnx")
    assert r.returncode == 0, r.stderr
    np.savez(tmp_path / "other.npz", features=rng.random((64, 6), dtype=np.float32), label=rng.random(64, dtype=np.float32))
    r = run(STATIC, mlp, "--calibration", tmp_path / "other.npz", "--output", tmp_path / "u.int8.onnx")
    assert r.returncode == 2 and "label" in r.stderr, r.stderr  # any other key is still refused


def test_static_calibrates_on_a_seeded_subset_when_asked(mlp, tmp_path):
    """--calibration-samples: what ptq_auto's recipe asks for when --max-memory capped a histogram method."""
    np.savez(tmp_path / "cal.npz", features=np.random.default_rng(0).random((64, 6), dtype=np.float32))
    outs = []
    for i in range(2):
        r = run(STATIC, mlp, "--calibration", tmp_path / "cal.npz", "--calibrate-method=entropy",
                "--calibration-samples=16", "--output", tmp_path / f"s{i}.int8.onnx")
        assert r.returncode == 0 and "calibrated on 16 samples" in r.stdout, r.stdout + r.stderr
        outs.append((tmp_path / f"s{i}.int8.onnx").read_bytes())
    assert outs[0] == outs[1]  # seeded: the same subset, the same artefact
