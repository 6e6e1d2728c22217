"""tinyq.quant.ort_linear: onnxruntime's quantize_static with its three quadratic steps made linear
gives byte-identical artefacts, and scans the graph a number of times that does not grow with it."""

import contextlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyq.quant import ort_linear, quantize
from tinyq_testing import testutil


def chain(n: int, *, branch: bool = False, clip: bool = False, softmax: bool = False) -> onnx.ModelProto:
    """MatMul, then n activations (Relu, or Relu and Clip in turn): each folds into its producer.
    branch: one activation's input is read twice, so it cannot fold; softmax: a Softmax at the end."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t0"], name="mm")]
    for i in range(n):
        op = "Clip" if clip and i % 2 else "Relu"
        inputs = [f"t{i}", "lo", "hi"] if op == "Clip" else [f"t{i}"]
        nodes.append(helper.make_node(op, inputs, [f"t{i + 1}"], name=f"act{i}"))
    last = f"t{n}"
    if branch:
        nodes.append(helper.make_node("Add", [f"t{n // 2}", last], ["sum"], name="add"))
        last = "sum"
    if softmax:
        nodes.append(helper.make_node("Softmax", [last], ["probs"], name="softmax"))
        last = "probs"
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"), numpy_helper.from_array(np.array(2.0, np.float32), "hi")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, [None, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def quantise(model, calibration, monkeypatch, linear: bool, **kwargs) -> bytes:
    if not linear:
        monkeypatch.setattr(ort_linear, "linear_steps", contextlib.nullcontext)
    out = quantize.quantize_static_qdq(model, calibration, **kwargs)
    monkeypatch.undo()
    return out


CASES = {
    "relu chain": (lambda: chain(40), {}),
    "relu and clip, a branch, a softmax": (lambda: chain(30, branch=True, clip=True, softmax=True), {}),
    "per channel": (lambda: chain(12, branch=True), {"per_channel": True}),
    "entropy": (lambda: chain(12, clip=True), {"method": "entropy"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_artefact_as_onnxruntimes_own_steps(case, monkeypatch):
    build, kwargs = CASES[case]
    calibration = {"x": np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)}
    fast = quantise(build(), calibration, monkeypatch, linear=True, **kwargs)
    slow = quantise(build(), calibration, monkeypatch, linear=False, **kwargs)
    assert fast == slow


def test_the_same_artefact_for_a_cnn_per_channel(monkeypatch):
    model = testutil.small_cnn()
    name = model.graph.input[0].name
    calibration = {name: np.random.default_rng(2).random((16, 1, 16, 16), dtype=np.float32)}
    for per_channel in (False, True):
        fast = quantise(model, calibration, monkeypatch, linear=True, per_channel=per_channel)
        slow = quantise(model, calibration, monkeypatch, linear=False, per_channel=per_channel)
        assert fast == slow


def test_whole_graph_scans_do_not_grow_with_the_graph(monkeypatch):
    """A structural property, not a timing: onnxruntime's per-node scans of every node are gone."""
    from onnxruntime.quantization.onnx_model import ONNXModel

    calibration = {"x": np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)}
    scans = {}
    for n in (20, 200):
        calls = []
        for name in ("input_name_to_nodes", "replace_output_of_all_nodes"):
            original = getattr(ONNXModel, name)
            monkeypatch.setattr(ONNXModel, name, lambda self, *a, _f=original, _n=name, **k: calls.append(_n) or _f(self, *a, **k))
        quantize.quantize_static_qdq(chain(n), calibration)
        monkeypatch.undo()
        scans[n] = len(calls)
    assert scans[200] == scans[20], scans


def test_onnxruntime_is_left_as_it_was():
    from onnxruntime.quantization.calibrate import MinMaxCalibrater
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    before = (MinMaxCalibrater.augment_graph, QDQQuantizer.adjust_tensor_ranges, QDQQuantizer.try_replacing_upstream_output)
    with ort_linear.linear_steps():
        assert MinMaxCalibrater.augment_graph is ort_linear._augment_graph
    assert (MinMaxCalibrater.augment_graph, QDQQuantizer.adjust_tensor_ranges,
            QDQQuantizer.try_replacing_upstream_output) == before
