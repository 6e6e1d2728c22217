"""tinyq.judge.saturation: clipping is reported per activation, under the names the user's fp32
model gives them, not the artefact's compacted ones."""

import numpy as np
import onnx

from tinyq.judge import saturation
from tinyq.quant import quantize
from tinyq_testing import testutil


def test_clipped_activations_carry_their_fp32_names(tmp_path):
    model = testutil.small_cnn()
    fp32 = tmp_path / "cnn.onnx"
    onnx.save(model, str(fp32))
    rng = np.random.default_rng(0)
    int8 = quantize.quantize_static_qdq(model, {"x": rng.random((32, 1, 16, 16), dtype=np.float32)})
    compacted = {t for n in onnx.load_from_string(int8).graph.node for t in n.output}
    assert "c1" not in compacted  # compaction renamed the activations ...
    shares = saturation.clipped_shares(int8, {"x": 3 * rng.random((16, 1, 16, 16), dtype=np.float32)}, fp32)
    fp32_tensors = {"x"} | {t for n in model.graph.node for t in n.output}
    assert shares and set(shares) <= fp32_tensors, shares  # ... the report names them as the fp32 model does
    assert shares["x"] > 0.5  # inputs three times the calibrated range clip


def test_without_the_fp32_model_an_activation_is_named_by_its_op():
    names = saturation.fp32_names(onnx.load_from_string(
        quantize.quantize_static_qdq(testutil.small_cnn(), {"x": np.ones((4, 1, 16, 16), np.float32)})), None)
    assert "Conv #1 output" in names.values()
