"""Old opsets, converted instead of refused: a pretrained model shipped at opset 11 or 12 (every
PP-OCR export) cannot be re-exported by its user, and onnx.version_converter converts it in one
call. The conversion is a repair the tools report, and it is kept only when onnxruntime computes
bit-identical fp32 outputs before and after, on seeded inputs of every graph input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx
from onnx import helper

from tinyq.model.loading import QuantizeError, Repair, model_opset

TARGET_OPSET = 17  # what tinyq's own exports use
_OLDEST = 7  # onnx.version_converter's adapters start here
_SPATIAL = 32  # a symbolic dimension past the batch: large enough for a CNN's pooling and strides


def _feeds(model: onnx.ModelProto) -> Dict[str, np.ndarray]:
    """Seeded inputs: batch 1, other symbolic dimensions _SPATIAL; floats N(0, 1), integers 0."""
    rng = np.random.default_rng(0)
    initialisers = {t.name for t in model.graph.initializer}
    feeds = {}
    for v in model.graph.input:
        if v.name in initialisers:
            continue
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if i == 0 else _SPATIAL)
                 for i, d in enumerate(t.shape.dim)]  # paddle2onnx writes -1 for a free dimension
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        feeds[v.name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                         else np.zeros(shape, dtype))
    return feeds


def _outputs(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _differ(before: List[np.ndarray], after: List[np.ndarray]) -> str:
    """'' when every output is bit-identical (NaN where NaN), else what differs."""
    if len(before) != len(after):
        return f"{len(before)} outputs became {len(after)}"
    for i, (a, b) in enumerate(zip(before, after)):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"output {i} changed from {a.dtype}{list(a.shape)} to {b.dtype}{list(b.shape)}"
        if not np.array_equal(a, b, equal_nan=np.issubdtype(a.dtype, np.floating)):
            return f"output {i} differs by up to {float(np.nanmax(np.abs(a.astype(np.float64) - b))):.3g}"
    return ""


def upgrade(path: Path, model: onnx.ModelProto, minimum: int, repairs: List[Repair]) -> onnx.ModelProto:
    """The model at opset TARGET_OPSET when it is below minimum (a repair), else as it is.
    QuantizeError naming the file and the fix when it cannot be converted, or its fp32 outputs change."""
    opset = model_opset(model)
    if opset >= minimum or opset < _OLDEST:
        return model
    fix = f"re-export it at opset {TARGET_OPSET} if you can, or convert it yourself and check its outputs"
    try:
        converted = onnx.version_converter.convert_version(model, TARGET_OPSET)
        feeds = _feeds(model)
        before, after = _outputs(model, feeds), _outputs(converted, feeds)
    except Exception as e:  # the converter and onnxruntime raise many types on graphs they cannot handle
        raise QuantizeError(f"{path}: opset {opset} is below the {minimum} the quantisers need, and converting it to "
                            f"{TARGET_OPSET} with onnx.version_converter failed ({type(e).__name__}: {e}); {fix}") from None
    differ = _differ(before, after)
    if differ:
        raise QuantizeError(f"{path}: opset {opset} is below the {minimum} the quantisers need, and converting it to "
                            f"{TARGET_OPSET} with onnx.version_converter changes its fp32 outputs ({differ}); {fix}")
    inputs = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
    repairs.append(Repair("opset_converted", f"opset {opset} -> {TARGET_OPSET} (onnx.version_converter); fp32 outputs "
                                             f"bit-identical before and after on seeded inputs {inputs}"))
    return converted
