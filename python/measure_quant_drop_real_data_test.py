"""//python:measure_quant_drop judges on real data, for every kind of output a real model has.

Each test builds its own models: onnx graphs written here, int8 files made by onnxruntime's own
quantize_static, and an skl2onnx classifier.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyq_testing.testutil import const, floats, int8_stand_in
from tinyq_testing.testutil import save_graph as save

TOOL = Path.cwd() / "python" / "measure_quant_drop"
PER_EP = Path.cwd() / "python" / "measure_quant_drop_per_ep"


def run(*args, tool=TOOL, env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, env={**base, **(env or {})})


def report(path):
    return json.loads(Path(path).read_text())["models"][0]


# --- budget semantics: real data judges, noise only stresses ---------------------------------


def _mlp(path):
    rng = np.random.default_rng(3)
    return save(path, [helper.make_node("MatMul", ["x", "w0"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                       helper.make_node("MatMul", ["r", "w1"], ["y"])],
                [floats("x", ["n", 8])], [floats("y", ["n", 1])],
                [const("w0", rng.standard_normal((8, 16))), const("w1", rng.standard_normal((16, 1)))])


def _static_int8(fp32, calibration, out):
    """onnxruntime's own static QDQ (uint8 activations, int8 weights), calibrated on real inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"x": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.rows, None)

    quantize_static(str(fp32), str(out), Reader(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


@pytest.fixture(scope="module")
def narrow_range_pair(tmp_path_factory):
    """An MLP whose real inputs lie in [0, 0.05]: calibrated there, its int8 saturates on uniform noise."""
    d = tmp_path_factory.mktemp("narrow")
    rng = np.random.default_rng(0)
    real = (rng.random((256, 8)) * 0.05).astype(np.float32)
    fp32 = _mlp(d / "mlp.onnx")
    int8 = _static_int8(fp32, real[:64], d / "mlp.int8.onnx")
    np.savez(d / "real.npz", x=real[64:])
    return fp32, int8, d / "real.npz"


def test_noise_and_real_data_disagree_real_data_decides(narrow_range_pair, tmp_path):
    fp32, int8, data = narrow_range_pair
    r = run("--fp32", fp32, "--int8", int8, "--data", data, "--out-json", tmp_path / "real.json")
    assert r.returncode == 0, r.stdout + r.stderr
    row = report(tmp_path / "real.json")
    by_set = {s["input_set"]: s for s in row["sets"]}
    assert row["judged_on"] == "data" and not row["synthetic_only"]
    assert by_set["data"]["drop"] < 0.01 and by_set["data"]["budget"] == 0.01
    # The noise disagrees (saturated activations): reported, not judged.
    assert by_set["synthetic"]["drop"] > 0.01 and by_set["synthetic"]["budget"] is None
    assert by_set["synthetic"]["pass"] is True

    # Without real data the same pair is judged on noise, and the verdict says so.
    r = run("--fp32", fp32, "--int8", int8, "--out-json", tmp_path / "noise.json")
    assert r.returncode == 1 and "SYNTHETIC DATA ONLY" in r.stdout and "pass --data X.npz" in r.stdout
    assert report(tmp_path / "noise.json")["judged_on"] == "synthetic"

    # A synthetic budget, where one is set, still judges the stress set.
    assert run("--fp32", fp32, "--int8", int8, "--data", data, "--synthetic-budget", "0.01").returncode == 1


def test_a_false_pass_on_noise_fails_on_real_data(tmp_path):
    """Calibrated on noise-like inputs, run on real inputs far outside that range: noise passes, real data fails."""
    rng = np.random.default_rng(1)
    fp32 = _mlp(tmp_path / "mlp.onnx")
    int8 = _static_int8(fp32, rng.random((64, 8), dtype=np.float32), tmp_path / "mlp.int8.onnx")
    np.savez(tmp_path / "real.npz", x=(3 + 2 * rng.random((128, 8))).astype(np.float32))
    assert run("--fp32", fp32, "--int8", int8).returncode == 0
    r = run("--fp32", fp32, "--int8", int8, "--data", tmp_path / "real.npz")
    assert r.returncode == 1 and "[FAIL] mlp" in r.stdout and "on the --data set" in r.stdout


def test_bad_data_file_exits_2_naming_the_key(narrow_range_pair, tmp_path):
    fp32, int8, _ = narrow_range_pair
    np.savez(tmp_path / "bad.npz", features=np.zeros((4, 8), np.float32))
    r = run("--fp32", fp32, "--int8", int8, "--data", tmp_path / "bad.npz")
    assert r.returncode == 2 and "missing key 'x'" in r.stderr and "Traceback" not in r.stderr


# --- every output shape a real model has -----------------------------------------------------


def test_zero_d_output_runs_sample_by_sample(tmp_path):
    def model(path, scale):
        return save(path, [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("ReduceSum", ["m"], ["y"], keepdims=0)],
                    [floats("x", ["n", 4])], [floats("y", [])], [const("s", [scale] * 4)])

    fp32, int8 = model(tmp_path / "sum.onnx", 1.0), int8_stand_in(model(tmp_path / "sum.int8.onnx", 1.001))
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((10, 4), dtype=np.float32))
    r = run("--fp32", fp32, "--int8", int8, "--data", tmp_path / "d.npz", "--out-json", tmp_path / "r.json")
    assert r.returncode == 0, r.stdout + r.stderr
    data = report(tmp_path / "r.json")["sets"][0]
    assert data["samples"] == 10 and data["outputs"][0]["values"] == 10
    assert data["outputs"][0]["drop"] < 1e-6 and not data["outputs"][0]["constant"]


def test_output_reduced_over_the_batch_runs_sample_by_sample(tmp_path):
    # y = mean over the batch axis: fed in one batch, 10 samples would give one row.
    def model(path, scale):
        return save(path, [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("ReduceMean", ["m"], ["y"], axes=[0], keepdims=0)],
                    [floats("x", ["n", 4])], [floats("y", [4])], [const("s", [scale] * 4)], opset=17)

    fp32, int8 = model(tmp_path / "mean.onnx", 1.0), int8_stand_in(model(tmp_path / "mean.int8.onnx", 0.999))
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((10, 4), dtype=np.float32))
    r = run("--fp32", fp32, "--int8", int8, "--data", tmp_path / "d.npz", "--out-json", tmp_path / "r.json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = report(tmp_path / "r.json")["sets"][0]
    assert out["samples"] == 10 and out["outputs"][0]["values"] == 40  # one [4] row per sample


def _fixed_batch_conv(path, seed):
    w = np.random.default_rng(seed).standard_normal((4, 3, 3, 3)) * 0.2
    return save(path, [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
                [floats("x", [1, 3, 8, 8])], [floats("y", [1, 4, 8, 8])], [const("w", w)])


def test_fixed_batch_1_is_fed_one_sample_at_a_time_latency_included(tmp_path):
    fp32 = _fixed_batch_conv(tmp_path / "fixed.onnx", 0)
    real = np.random.default_rng(0).random((6, 3, 8, 8), dtype=np.float32)
    int8 = _static_int8(fp32, real[:1], tmp_path / "fixed.int8.onnx")
    np.savez(tmp_path / "d.npz", x=real)
    r = run("--fp32", fp32, "--int8", int8, "--data", tmp_path / "d.npz", "--latency", "--out-json", tmp_path / "r.json")
    assert r.returncode == 0, r.stdout + r.stderr
    row = report(tmp_path / "r.json")
    assert row["latency_error"] is None and set(row["latency_ms"]["fp32"]) == {"1"} and set(row["latency_ms"]["int8"]) == {"1"}
    assert [s["samples"] for s in row["sets"]] == [6, 16]


def test_a_single_real_sample_is_not_a_constant_output_and_judges_nothing(tmp_path):
    def model(path, scale):
        return save(path, [helper.make_node("MatMul", ["x", "w"], ["y"])], [floats("x", [1, 3])], [floats("y", [1, 1])],
                    [const("w", np.full((3, 1), scale))])

    fp32, int8 = model(tmp_path / "one.onnx", 1.0), int8_stand_in(model(tmp_path / "one.int8.onnx", 1.0001))
    np.savez(tmp_path / "d.npz", x=np.array([[0.2, 0.3, 0.4]], np.float32))
    r = run("--fp32", fp32, "--int8", int8, "--data", tmp_path / "d.npz", "--out-json", tmp_path / "r.json")
    assert r.returncode == 5, r.stdout + r.stderr
    out = report(tmp_path / "r.json")["sets"][0]["outputs"][0]
    assert out["constant"] is False and "a single value" in out["reason"] and out["judged"] is False


def _labels_model(path, w):
    """scores = x @ w, label = ArgMax(scores): a float and an int64 output."""
    return save(path, [helper.make_node("MatMul", ["x", "w"], ["scores"]),
                       helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)],
                [floats("x", ["n", 4])], [floats("scores", ["n", 3]), helper.make_tensor_value_info("label", TensorProto.INT64, ["n"])],
                [const("w", w)])


def test_int64_labels_are_judged_by_agreement(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3))
    fp32 = _labels_model(tmp_path / "cls.onnx", w)
    near = int8_stand_in(_labels_model(tmp_path / "near.int8.onnx", w * (1 + 1e-4)))
    swapped = int8_stand_in(_labels_model(tmp_path / "swapped.int8.onnx", w[:, [1, 0, 2]]))
    x = rng.standard_normal((200, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, target=np.argmax(x @ w, axis=1).astype(np.int64))
    r = run("--fp32", fp32, "--int8", near, "--data", tmp_path / "d.npz", "--out-json", tmp_path / "r.json")
    assert r.returncode == 0, r.stdout + r.stderr
    row = report(tmp_path / "r.json")
    label = next(o for o in row["sets"][0]["outputs"] if o["name"] == "label")
    assert label["compared"] == "labels" and label["drop"] == 0.0 and "agreement 100.0000%" in label["reason"]
    assert row["task"]["fp32"]["accuracy"] == 1.0
    r = run("--fp32", fp32, "--int8", swapped, "--data", tmp_path / "d.npz")
    assert r.returncode == 1 and "output 'label' (labels): labels: agreement" in r.stdout


def test_skl2onnx_classifier_with_zipmap_is_skipped_with_the_fix(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    clf = LogisticRegression().fit(x, y)
    model = to_onnx(clf, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    assert any(n.op_type == "ZipMap" for n in model.graph.node)
    fp32 = tmp_path / "clf.onnx"
    fp32.write_bytes(model.SerializeToString())
    name = model.graph.input[0].name
    np.savez(tmp_path / "d.npz", **{name: x})
    int8 = tmp_path / "clf.int8.onnx"
    int8.write_bytes(fp32.read_bytes())
    r = run("--fp32", fp32, "--int8", int8_stand_in(int8), "--data", tmp_path / "d.npz", "--out-json", tmp_path / "r.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "'dict'" not in r.stderr and "zipmap" in r.stdout
    outputs = {o["name"]: o for o in report(tmp_path / "r.json")["sets"][0]["outputs"]}
    assert outputs["output_label"]["compared"] == "labels"
    assert outputs["output_probability"]["compared"] == "skipped" and "'zipmap': False" in outputs["output_probability"]["reason"]


# --- image-to-image: the residual and the kept gain -------------------------------------------


def _filter(path, kernel):
    """y = x + conv(reflect-padded x, kernel): a residual 3x3 filter on [N, 1, H, W] luma."""
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    return save(path, [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"), helper.make_node("Conv", ["p", "k"], ["r"]),
                       helper.make_node("Add", ["x", "r"], ["y"])],
                [floats("x", ["n", 1, "h", "w"])], [floats("y", ["n", 1, "h", "w"])], [const("k", kernel.reshape(1, 1, 3, 3)), pads])


def test_filter_whose_int8_destroys_the_gain_fails_though_full_output_pearson_is_near_1(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:24, 0:24] / 24.0
    clean = np.stack([0.5 + 0.3 * np.sin(2 * np.pi * (f * xx + g * yy)) for f, g in rng.random((32, 2)) * 1.5])[:, None]
    noisy = (clean + 0.02 * rng.standard_normal(clean.shape)).astype(np.float32)
    blur = np.full((3, 3), 1 / 9.0) - np.pad([[1.0]], 1)  # box blur minus identity: a denoising residual
    fp32 = _filter(tmp_path / "f.onnx", blur)
    broken = int8_stand_in(_filter(tmp_path / "f.int8.onnx", np.roll(blur, 1, axis=1) * 0.1))
    np.savez(tmp_path / "d.npz", x=noisy, target=clean.astype(np.float32))

    import onnxruntime as ort
    a = ort.InferenceSession(str(fp32)).run(None, {"x": noisy})[0].ravel()
    b = ort.InferenceSession(str(broken)).run(None, {"x": noisy})[0].ravel()
    assert 1 - np.corrcoef(a, b)[0, 1] < 0.01  # the old full-output judgement would pass it

    r = run("--fp32", fp32, "--int8", broken, "--data", tmp_path / "d.npz", "--residual-of", "x", "--out-json", tmp_path / "r.json")
    assert r.returncode == 1, r.stdout + r.stderr
    row = report(tmp_path / "r.json")
    out = row["sets"][0]["outputs"][0]
    assert out["compared"] == "residual vs x" and out["drop"] > 0.01
    assert row["task"]["fp32"]["psnr_gain_db"] > 1.0 and row["task_check"]["passed"] is False
    assert "of the fp32's PSNR gain" in r.stdout

    # A residual merely scaled down keeps Pearson r = 1 on the residual: the kept-gain check fails it.
    weak = int8_stand_in(_filter(tmp_path / "weak.int8.onnx", blur * 0.05))
    r = run("--fp32", fp32, "--int8", weak, "--data", tmp_path / "d.npz", "--residual-of", "x", "--out-json", tmp_path / "w.json")
    assert r.returncode == 1 and report(tmp_path / "w.json")["sets"][0]["outputs"][0]["drop"] < 1e-6
    assert report(tmp_path / "w.json")["task_check"]["kept"] < 0.9
    # The same filter against itself keeps its whole gain.
    same = int8_stand_in(_filter(tmp_path / "same.int8.onnx", blur))
    assert run("--fp32", fp32, "--int8", same, "--data", tmp_path / "d.npz", "--residual-of", "x").returncode == 0


# --- the per-EP harness -------------------------------------------------------------------------


def test_per_ep_harness_judges_real_data_and_leaves_no_temp_dirs(narrow_range_pair, tmp_path):
    fp32, int8, data = narrow_range_pair
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    reg = tmp_path / "empty.json"
    reg.write_text(json.dumps({"schema_version": 1, "models": []}))
    r = run("--eps", "cpu", "--registry", reg, "--extra-fp32", fp32, "--extra-int8", int8, "--extra-data", data,
            "--out", tmp_path / "o", "--gate", tool=PER_EP, env={"TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((tmp_path / "o" / "results.json").read_text())["rows"]
    assert {row["model"] for row in rows} == {"mlp"} and all(row["judged_on"] == "data" for row in rows)
    assert all(row["status"] == "pass" for row in rows)
    assert list(tmp.iterdir()) == []


def test_per_ep_gate_with_nothing_judged_exits_5(narrow_range_pair, tmp_path):
    fp32, int8, data = narrow_range_pair
    r = run("--eps", "openvino", "--disable-ep", "openvino", "--id", "vmaf_tiny_v2", "--out", tmp_path / "o", "--gate",
            tool=PER_EP)
    assert r.returncode == 5 and "judged nothing" in r.stderr
    rows = json.loads((tmp_path / "o" / "results.json").read_text())["rows"]
    assert [row["model"] for row in rows] == ["vmaf_tiny_v2", "vmaf_tiny_v2"]
