"""tinyq.model.opsets: a model below the quantisers' opset is converted with onnx.version_converter,
kept only when its fp32 outputs stay bit-identical, and the conversion is a reported repair."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyq.model import opsets
from tinyq.model.loading import QuantizeError


def old_mlp(opset: int) -> onnx.ModelProto:
    """Gemm, Clip (min and max as inputs from opset 11), Gemm, Softmax: ops whose signature changed."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (6, 16)), ("b1", (16,)), ("w2", (16, 3)), ("b2", (3,)))]
    inits += [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0.0), ("hi", 6.0))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
             helper.make_node("Clip", ["h", "lo", "hi"], ["c"]),
             helper.make_node("Gemm", ["c", "w2", "b2"], ["z"]),
             helper.make_node("Softmax", ["z"], ["p"], axis=1)]
    graph = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("opset", [11, 12])
def test_an_old_opset_is_converted_and_its_outputs_kept(opset):
    model, repairs = old_mlp(opset), []
    converted = opsets.upgrade(Path("old.onnx"), model, 13, repairs)
    assert [o.version for o in converted.opset_import if o.domain == ""] == [opsets.TARGET_OPSET]
    onnx.checker.check_model(converted)
    x = np.random.default_rng(5).standard_normal((7, 6)).astype(np.float32)
    assert np.array_equal(run(model, x), run(converted, x))
    assert [r.code for r in repairs] == ["opset_converted"]
    assert repairs[0].detail.startswith(f"opset {opset} -> 17 (onnx.version_converter); fp32 outputs bit-identical")
    assert "x[1, 6]" in repairs[0].detail


def test_a_current_opset_is_left_alone():
    model, repairs = old_mlp(13), []
    assert opsets.upgrade(Path("m.onnx"), model, 13, repairs) is model and repairs == []


def test_a_conversion_that_fails_is_refused_naming_the_file_and_the_fix():
    model = old_mlp(11)
    model.graph.node[1].input[1] = "missing"  # a graph onnxruntime cannot load: nothing to compare
    with pytest.raises(QuantizeError, match=r"bad\.onnx: opset 11 is below the 13 the quantisers need, and converting "
                                            r"it to 17 with onnx.version_converter failed .* re-export it at opset 17"):
        opsets.upgrade(Path("bad.onnx"), model, 13, [])


def test_outputs_that_change_are_named():
    a = [np.array([1.0, np.nan], np.float32)]
    assert opsets._differ(a, [np.array([1.0, np.nan], np.float32)]) == ""
    assert opsets._differ(a, [np.array([1.5, np.nan], np.float32)]) == "output 0 differs by up to 0.5"
    assert opsets._differ(a, [np.zeros((2, 1), np.float32)]) == "output 0 changed from float32[2] to float32[2, 1]"
    assert opsets._differ(a, a + a) == "1 outputs became 2"


def test_a_free_dimension_written_as_minus_one_is_fed_as_free():
    """paddle2onnx writes -1 where a dimension is free ([-1, 3, ?, ?])."""
    model = old_mlp(11)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    repairs = []
    opsets.upgrade(Path("paddle.onnx"), model, 13, repairs)
    assert "x[1, 6]" in repairs[0].detail
