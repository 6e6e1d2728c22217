"""Test-only helpers for //tests:gate_mutation_test: the small fp32 models it builds beside the
zoo, with their real data, and their int8 from onnxruntime's own quantisers."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mutations import producer


def _save(nodes, inputs, outputs, inits_, name) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits_)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tinyq-mutation-test")
    onnx.checker.check_model(model)
    return model


def _f32(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def multi_output_model(seed: int = 0) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
    """An MLP on x [n, 16] with four heads, and its real data (inputs in four clusters):

    score [n, 1]; embed [n, 16], which has x's shape but is NOT a residual (a small-scale embedding,
    std about 0.05 against x's 1.5); label [n] int64 (ArgMax of 4 logits); small [n, 1], a score
    scaled by 1e-4, so its whole range is below an absolute tolerance of 1e-3.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, 16)) * 1.5
    k = rng.integers(4, size=1024)
    x = (centres[k] + 0.3 * rng.standard_normal((1024, 16))).astype(np.float32)
    w0 = rng.standard_normal((16, 32)) / 4
    b0 = rng.standard_normal(32) * 0.1
    h = np.maximum(x @ w0 + b0, 0)
    wg = rng.standard_normal((32, 16))
    wg *= 0.05 / (h @ wg).std()
    # logits: each cluster centre's score, so labels have wide margins
    wl = np.linalg.lstsq(h, x @ centres.T, rcond=None)[0]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"]),
        helper.make_node("Add", ["h0", "b0"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "ws"], ["s0"]),
        helper.make_node("Add", ["s0", "bs"], ["score"]),
        helper.make_node("MatMul", ["h", "wg"], ["embed"]),
        helper.make_node("MatMul", ["h", "wl"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        helper.make_node("MatMul", ["h", "wt"], ["t0"]),
        helper.make_node("Mul", ["t0", "tiny_scale"], ["small"]),
    ]
    model = _save(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1]),
         helper.make_tensor_value_info("embed", TensorProto.FLOAT, ["n", 16]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
         helper.make_tensor_value_info("small", TensorProto.FLOAT, ["n", 1])],
        [_f32("w0", w0), _f32("b0", b0), _f32("ws", rng.standard_normal((32, 1)) / 4), _f32("bs", [3.0]),
         _f32("wg", wg), _f32("wl", wl), _f32("wt", rng.standard_normal((32, 1)) / 4), _f32("tiny_scale", 1e-4)],
        "multi_output",
    )
    return model, {"x": x}


def _smooth_images(rng, n: int, size: int) -> np.ndarray:
    """Smooth luma in [0.15, 0.85]: a few random low-frequency cosines."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, 1, size, size))
    for _ in range(4):
        fy, fx = rng.uniform(0, 1.5, (2, n, 1, 1, 1))
        ph = rng.uniform(0, 2 * np.pi, (n, 1, 1, 1))
        out += rng.uniform(0.05, 0.12, (n, 1, 1, 1)) * np.cos(2 * np.pi * (fy * yy + fx * xx) + ph)
    return np.clip(0.5 + out, 0.15, 0.85)


def tiny_filter_model(seed: int = 0, size: int = 16) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
    """A residual denoiser restored = dist + body(dist), body = Pad(edge) Conv(1->8, 3x3) Relu Conv(8->1, 1x1),
    built so that body(dist) = 0.8 * (blur(dist) - dist) plus a little texture; its real data is
    smooth luma with Gaussian noise (sigma 0.04), with the clean luma as `target`."""
    rng = np.random.default_rng(seed)
    blur = np.full((3, 3), 1 / 9)
    delta = np.zeros((3, 3))
    delta[1, 1] = 1
    k = blur - delta
    extra = rng.standard_normal((3, 3, 3)) * 0.05
    kernels = [k, -k] + [e for e in extra] + [-e for e in extra]  # 8 channels
    w1 = np.stack(kernels)[:, None]
    w2 = np.array([0.8, -0.8] + [0.02] * 3 + [-0.02] * 3).reshape(1, 8, 1, 1)
    nodes = [
        helper.make_node("Pad", ["dist", "pads"], ["padded"], mode="edge"),
        helper.make_node("Conv", ["padded", "w1", "b1"], ["c1"]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["residual"]),
        helper.make_node("Add", ["dist", "residual"], ["restored"], name="skip"),
    ]
    model = _save(
        nodes,
        [helper.make_tensor_value_info("dist", TensorProto.FLOAT, ["n", 1, size, size])],
        [helper.make_tensor_value_info("restored", TensorProto.FLOAT, ["n", 1, size, size])],
        [numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
         _f32("w1", w1), _f32("b1", np.zeros(8)), _f32("w2", w2), _f32("b2", [0.0])],
        "tiny_filter",
    )
    target = _smooth_images(rng, 512, size)
    dist = target + 0.04 * rng.standard_normal(target.shape)
    return model, {"dist": dist.astype(np.float32), "target": target.astype(np.float32)}


def dynamic_mlp_model(seed: int = 0) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
    """features [n, 8] -> MatMul-Add-Relu-MatMul-Add-Relu-MatMul -> score [n, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1024, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["features", "w0"], ["a0"]),
        helper.make_node("Add", ["a0", "b0"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["a2"]),
        helper.make_node("MatMul", ["a2", "w1"], ["a3"]),
        helper.make_node("Add", ["a3", "b1"], ["a4"]),
        helper.make_node("Relu", ["a4"], ["a5"]),
        helper.make_node("MatMul", ["a5", "w2"], ["score"]),
    ]
    model = _save(
        nodes,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n", 1])],
        [_f32("w0", rng.standard_normal((8, 32)) / 3), _f32("b0", rng.standard_normal(32) * 0.1),
         _f32("w1", rng.standard_normal((32, 32)) / 6), _f32("b1", rng.standard_normal(32) * 0.1),
         _f32("w2", rng.standard_normal((32, 1)) / 6)],
        "dynamic_mlp",
    )
    return model, {"features": x}


def quantize_static_bytes(model: onnx.ModelProto, calibration: Dict[str, np.ndarray], workdir,
                          exclude: Sequence[str] = ()) -> bytes:
    """onnxruntime's own static QDQ (uint8 activations, int8 per-tensor weights); nodes named in
    `exclude` stay float (a filter's skip Add, so the int8 adds its residual to the exact input)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(calibration.values())))
            self.rows = iter([{k: v[i:i + 16] for k, v in calibration.items()} for i in range(0, n, 16)])

        def get_next(self):
            return next(self.rows, None)

    src, dst = workdir / f"{model.graph.name}.onnx", workdir / f"{model.graph.name}.int8.onnx"
    onnx.save(model, str(src))
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))
    if not exclude:
        return dst.read_bytes()
    q = onnx.load(str(dst))
    graph_inputs = {i.name for i in q.graph.input}
    for node in q.graph.node:
        if node.name not in exclude:
            continue
        for pos, tensor in enumerate(node.input):  # a graph input seen through its Q/DQ pair: the exact input
            dq = producer(q, tensor)
            qn = producer(q, dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if qn is not None and qn.op_type == "QuantizeLinear" and qn.input[0] in graph_inputs:
                node.input[pos] = qn.input[0]
    return q.SerializeToString()


def quantize_dynamic_bytes(model: onnx.ModelProto, workdir) -> bytes:
    """onnxruntime's own dynamic quantisation (int8 weights, MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = workdir / f"{model.graph.name}.onnx", workdir / f"{model.graph.name}.int8.onnx"
    onnx.save(model, str(src))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst.read_bytes()
