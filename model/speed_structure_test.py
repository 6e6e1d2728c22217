"""Every int8 artefact meant for speed runs every compute op as an int8 kernel, and every
convolution on onnxruntime's fused int8 path.

A structural check, stable on any machine: in onnxruntime's optimised graph no Conv, Gemm,
MatMul, Add, Mul, pool or Concat may still run in fp32 on DequantizeLinear outputs, and every
QLinearConv meets the conditions of MLAS's symmetric indirect convolution (tinyq.quant.rewrites: int8
weights with zero points 0, input channels % 4, output channels >= 16 and % 4). Timing is never
asserted here; `measure_quant_drop --speed-gate` times artefacts on the machine at hand.
"""

from pathlib import Path

import pytest

from tinyq.app import starlark
from tinyq.quant import fusion, rewrites
from tinyq.registry import registry

RECIPES = starlark.constant(Path("model/zoo.bzl"), "ZOO_INT8")
REG = registry.load(Path("model/tiny/registry.json"))
SPEED = sorted(m for m, r in RECIPES.items() if r.get("purpose") == "speed")


def test_every_recipe_states_its_purpose_as_the_registry_does():
    for model_id, recipe in RECIPES.items():
        assert recipe.get("purpose") in ("speed", "size"), f"{model_id}: recipe purpose {recipe.get('purpose')!r}"
        raw = REG.get(model_id).raw
        assert raw.get("quant_purpose") == recipe["purpose"], f"{model_id}: registry quant_purpose {raw.get('quant_purpose')!r}"
        assert raw.get("quant_encoding") == recipe["encoding"], f"{model_id}: registry quant_encoding {raw.get('quant_encoding')!r}"


@pytest.mark.parametrize("model_id", SPEED)
def test_speed_artefact_runs_fully_fused(model_id):
    built = Path("model/int8") / f"{model_id}.int8.onnx"
    unfused = fusion.fusion(built.read_bytes())
    assert unfused == [], f"{model_id}: {len(unfused)} compute ops run unfused in fp32 ({unfused}); it cannot be a speed artefact"


@pytest.mark.parametrize("model_id", SPEED)
def test_speed_artefact_convolutions_take_the_fused_int8_path(model_id):
    """Every QLinearConv meets the fused path's conditions, or the recipe names each condition it
    misses (ptq_auto's conv_misses: the rewrite that fixes it was measured and not faster)."""
    built = Path("model/int8") / f"{model_id}.int8.onnx"
    misses = [m for k in rewrites.conv_kernels(built.read_bytes()) for m in k.misses]
    assert misses == RECIPES[model_id].get("conv_misses", []), (
        f"{model_id}: convolutions off the fused int8 path {misses}, the recipe declares "
        f"{RECIPES[model_id].get('conv_misses', [])}; re-run ptq_auto and take its recipe")


def test_the_check_has_teeth(tmp_path):
    """A quantised ConvTranspose has no int8 kernel in onnxruntime's CPU provider: it runs as
    DequantizeLinear -> ConvTranspose -> QuantizeLinear, and the check counts it."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    w = numpy_helper.from_array(np.random.default_rng(0).random((8, 4, 2, 2), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["t"], strides=[2, 2], name="up"), helper.make_node("Relu", ["t"], ["y"])],
        "up", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 16, 16])], initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "up.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"x": np.random.default_rng(1).random((4, 8, 8, 8), dtype=np.float32)}])

        def get_next(self):
            return next(self.rows, None)

    quantize_static(str(tmp_path / "up.onnx"), str(tmp_path / "up.int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["ConvTranspose", "Relu"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    assert fusion.fusion((tmp_path / "up.int8.onnx").read_bytes()) == ["ConvTranspose"]
