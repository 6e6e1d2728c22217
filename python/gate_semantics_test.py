"""A verdict only from a judgement: the holes that fooled the gate, each on a model built here.

- a residual filter whose int8 returns its input (constant int8 residual) fails with drop 1;
- an output that merely has an input's shape is judged on itself, never as a residual;
- outputs that cannot be judged never pass (exit 5);
- a ZipMap classifier's candidates in ptq_auto are judged on the label output;
- the gate, ptq_auto's evaluator, bench_peers (tinyq.judge.gate.judge) and the per-EP harness report
  the same worst-output drop on a multi-output model.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from tinyq_testing.testutil import const, floats, int8_stand_in
from tinyq_testing.testutil import save_graph as save

GATE = Path.cwd() / "python" / "measure_quant_drop"
PER_EP = Path.cwd() / "python" / "measure_quant_drop_per_ep"
AUTO = Path.cwd() / "python" / "ptq_auto"


def run(tool, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, env=env)


def independent_drop(a, b):
    """1 - Pearson r, written out (not tinyq's code)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return 1 - float(a @ b / np.sqrt((a @ a) * (b @ b)))


def gate_json(tmp_path, *args):
    out = tmp_path / "gate.json"
    r = run(GATE, *args, "--out-json", out)
    return r, (json.loads(out.read_text())["models"][0] if out.exists() else None)


def images(n, seed, size=16):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.5 + 0.3 * np.sin(2 * np.pi * (f * xx + g * yy)) for f, g in rng.random((n, 2)) * 2])[:, None]
    return (base + 0.03 * rng.standard_normal(base.shape)).astype(np.float32)


# --- a residual filter whose int8 returns its input ---------------------------------------------


def _filter(path, kernel, bias=0.0):
    """restored = x + conv(x) + bias: a residual 3x3 filter."""
    return save(path, [helper.make_node("Conv", ["x", "k", "b"], ["r"], pads=[1, 1, 1, 1]),
                       helper.make_node("Add", ["x", "r"], ["restored"])],
                [floats("x", ["n", 1, "h", "w"])], [floats("restored", ["n", 1, "h", "w"])],
                [const("k", np.asarray(kernel).reshape(1, 1, 3, 3)), const("b", [bias])])


def test_filter_whose_int8_returns_its_input_fails_with_drop_1(tmp_path):
    blur = np.full((3, 3), 1 / 9.0) - np.pad([[1.0]], 1)
    fp32 = _filter(tmp_path / "f.onnx", blur)
    # The int8's last conv zeroed, its bias a hair off zero: int8 residual constant at 3e-4.
    identity = int8_stand_in(_filter(tmp_path / "f.int8.onnx", np.zeros((3, 3)), bias=3e-4))
    np.savez(tmp_path / "d.npz", x=images(32, 0))
    r, row = gate_json(tmp_path, "--fp32", fp32, "--int8", identity, "--data", tmp_path / "d.npz", "--residual-of", "x")
    assert r.returncode == 1, r.stdout + r.stderr
    out = row["sets"][0]["outputs"][0]
    assert out["compared"] == "residual vs x" and out["drop"] == 1.0 and out["constant"] is True
    assert "int8 output is constant where fp32 varies" in out["reason"]
    assert row["worst_drop"] == 1.0 and row["pass"] is False


def test_constant_outputs_are_judged_relative_to_their_scale_with_the_tolerance_stated(tmp_path):
    def model(path, value):
        return save(path, [helper.make_node("Mul", ["x", "zero"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])],
                    [floats("x", ["n", 2])], [floats("y", ["n", 2])], [const("zero", [0.0, 0.0]), const("c", [value, value])])

    fp32 = model(tmp_path / "c.onnx", 50.0)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((20, 2), dtype=np.float32))
    near, far = int8_stand_in(model(tmp_path / "near.onnx", 50.02)), int8_stand_in(model(tmp_path / "far.onnx", 50.2))
    r, row = gate_json(tmp_path, "--fp32", fp32, "--int8", near, "--data", tmp_path / "d.npz")
    out = row["sets"][0]["outputs"][0]
    assert r.returncode == 0 and out["tolerance"] == pytest.approx(0.05) and "tolerance 0.05" in out["reason"]
    r, row = gate_json(tmp_path, "--fp32", fp32, "--int8", far, "--data", tmp_path / "d.npz")
    assert r.returncode == 1 and "> tolerance 0.05" in row["sets"][0]["outputs"][0]["reason"]


# --- an output that merely has an input's shape ---------------------------------------------------


def _guided(path, w_conf):
    """Two inputs, x [N,1,H,W] and guide [N,1,H,W]; outputs: score [N,1] and confidence =
    sigmoid(conv(x)) [N,1,H,W], which has the guide's shape but restores nothing."""
    return save(path, [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                       helper.make_node("Sigmoid", ["c"], ["confidence"]),
                       helper.make_node("Mul", ["confidence", "guide"], ["g"]),
                       helper.make_node("ReduceMean", ["g"], ["score"], axes=[1, 2, 3], keepdims=0)],
                [floats("x", ["n", 1, 8, 8]), floats("guide", ["n", 1, 8, 8])],
                [floats("score", ["n"]), floats("confidence", ["n", 1, 8, 8])],
                [const("w", np.asarray(w_conf).reshape(1, 1, 3, 3))])


@pytest.fixture(scope="module")
def guided(tmp_path_factory):
    d = tmp_path_factory.mktemp("guided")
    w = np.random.default_rng(1).standard_normal((3, 3)) * 0.5
    fp32 = _guided(d / "g.onnx", w)
    int8 = int8_stand_in(_guided(d / "g.int8.onnx", w + np.random.default_rng(2).standard_normal((3, 3)) * 0.02))
    rng = np.random.default_rng(3)
    x = rng.random((64, 1, 8, 8), dtype=np.float32)
    guide = (5 * rng.standard_normal((64, 1, 8, 8))).astype(np.float32)  # large variance: it would hide any damage
    np.savez(d / "d.npz", x=x, guide=guide)
    import onnxruntime as ort

    a = ort.InferenceSession(str(fp32)).run(None, {"x": x, "guide": guide})
    b = ort.InferenceSession(str(int8)).run(None, {"x": x, "guide": guide})
    truth = {"score": independent_drop(a[0], b[0]), "confidence": independent_drop(a[1], b[1]),
             "confidence as residual vs guide": independent_drop(a[1] - guide, b[1] - guide)}
    return fp32, int8, d / "d.npz", truth


def test_output_with_an_inputs_shape_is_judged_on_itself(guided, tmp_path):
    fp32, int8, data, truth = guided
    r, row = gate_json(tmp_path, "--fp32", fp32, "--int8", int8, "--data", data, "--budget", "1e-6")
    outs = {o["name"]: o for o in row["sets"][0]["outputs"]}
    assert outs["confidence"]["compared"] == "output"
    assert outs["confidence"]["drop"] == pytest.approx(truth["confidence"], rel=1e-6)
    # The guide's variance would have hidden the damage: as a residual it reads >100x smaller.
    assert truth["confidence as residual vs guide"] * 100 < truth["confidence"] and r.returncode == 1
    assert row["worst_drop"] == pytest.approx(max(truth["score"], truth["confidence"]), rel=1e-6)
    assert row["sets"][0]["drop"] == row["worst_drop"]
    assert f"| confidence | output | {outs['confidence']['drop']:.3e} |" in r.stdout


def test_gate_auto_and_per_ep_agree_on_the_drop_of_a_multi_output_model(guided, tmp_path):
    from tinyq.judge import gate
    from tinyq.model import runner
    from tinyq.search import auto

    fp32, int8, data, truth = guided
    arrays = dict(np.load(data))
    r, row = gate_json(tmp_path, "--fp32", fp32, "--int8", int8, "--data", data)
    assert r.returncode == 0, r.stdout + r.stderr
    evaluator = auto.Evaluator(runner.session(str(fp32)), arrays, gate.Budgets(0.01))
    assert evaluator(runner.session(str(int8))).drop == pytest.approx(row["worst_drop"], rel=1e-12)
    reg = tmp_path / "empty.json"
    reg.write_text(json.dumps({"schema_version": 1, "models": []}))
    r = run(PER_EP, "--eps", "cpu", "--registry", reg, "--extra-fp32", fp32, "--extra-int8", int8, "--extra-data", data,
            "--out", tmp_path / "ep")
    assert r.returncode == 0, r.stdout + r.stderr
    ep_rows = json.loads((tmp_path / "ep" / "results.json").read_text())["rows"]
    assert ep_rows and all(x["worst_drop"] == pytest.approx(row["worst_drop"], rel=1e-6) for x in ep_rows)
    assert row["worst_drop"] == pytest.approx(max(truth["score"], truth["confidence"]), rel=1e-6)


# --- nothing judged is never a pass -----------------------------------------------------------------


def test_nothing_judged_exits_5(tmp_path):
    def model(path, scale):
        return save(path, [helper.make_node("MatMul", ["x", "w"], ["y"])], [floats("x", [1, 3])], [floats("y", [1, 1])],
                    [const("w", np.full((3, 1), scale))])

    np.savez(tmp_path / "d.npz", x=np.array([[0.2, 0.3, 0.4]], np.float32))
    fp32, int8 = model(tmp_path / "one.onnx", 1.0), int8_stand_in(model(tmp_path / "o8.onnx", 9.0))
    r, row = gate_json(tmp_path, "--fp32", fp32, "--int8", int8, "--data", tmp_path / "d.npz")
    assert r.returncode == 5 and "[NOT JUDGED]" in r.stdout and "Traceback" not in r.stderr
    assert row["pass"] is False and row["judged"] is False


# --- ptq_auto on a ZipMap classifier --------------------------------------------------------------------


def test_auto_judges_a_zipmap_classifier_on_its_labels(tmp_path):
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 6)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] + x[:, 2] > 0).astype(np.int64)
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(x[:400], y[:400])
    model = to_onnx(clf, x[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    assert any(n.op_type == "ZipMap" for n in model.graph.node)
    (tmp_path / "clf.onnx").write_bytes(model.SerializeToString())
    name = model.graph.input[0].name
    np.savez(tmp_path / "cal.npz", **{name: x[:256]})
    np.savez(tmp_path / "val.npz", **{name: x[400:]})
    r = run(AUTO, "--fp32", tmp_path / "clf.onnx", "--calibration", tmp_path / "cal.npz", "--validation", tmp_path / "val.npz",
            "--report-out", tmp_path / "auto.json")
    assert r.returncode == 0, r.stdout + r.stderr
    candidates = json.loads((tmp_path / "auto.json").read_text())["candidates"]
    assert candidates and all(c["validation_drop"] is not None for c in candidates)
    # Each drop is the label disagreement the gate computes: a multiple of 1/200 samples.
    assert all(abs(c["validation_drop"] * 200 - round(c["validation_drop"] * 200)) < 1e-9 for c in candidates)


def test_a_classifier_is_judged_for_accuracy_from_logits_or_labels():
    """Integer target labels: top-1 accuracy from logits [N, classes], or from an output of labels."""
    from tinyq.judge import gate

    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]], np.float32)
    target = np.array([0, 1, 1], np.int64)
    assert gate.task_metrics({}, ["logits"], [logits], target, {}) == {"accuracy": pytest.approx(2 / 3)}
    labels = np.array([0, 1, 0], np.int64)
    assert gate.task_metrics({}, ["label"], [labels], target, {}) == {"accuracy": pytest.approx(2 / 3)}
    scores = np.array([0.1, 0.9, 0.4], np.float32)  # a float target stays a score
    assert "plcc" in gate.task_metrics({}, ["score"], [scores], np.array([0.2, 0.8, 0.5], np.float32), {})
