"""The int16 pair bound of every integer layer, and the fix that makes a layer saturation-free.

On AVX2 (and AVX-512 without VNNI) onnxruntime's u8 x s8 kernels add each adjacent pair of
products along the reduction axis K into int16 with saturation (tinyq.judge.arithmetic). With uint8
activations a_i in [0, 255] and int8 weights w_i, the pair sum a_i w_i + a_j w_j lies in
  [255 (min(w_i, 0) + min(w_j, 0)), 255 (max(w_i, 0) + max(w_j, 0))],
and both ends are reached by some input. A pair can saturate iff that interval leaves
[-32768, 32767]: two positive weights adding past 128, or two negative ones past -128.

Which weights are paired depends on how a kernel lays K out (QLinearConv reads NHWC, so its
im2col GEMM and its symmetric indirect kernel pair adjacent input channels at one kernel position,
or adjacent positions where C is odd; MatMul and Gemm pair adjacent rows of K; padding a channel
moves the pairs). The bound here does not depend on it: it takes the two largest positive and the
two most negative weights of each output channel, so it holds for every pairing any kernel or
rewrite may form, and a padded (zero) channel can never raise it.

The fix (fix_overflow) re-encodes a layer's weights from the fp32 source so that no pair can
cross: "needed" gives each layer whose bound can be crossed the narrowest safe scale (per output
channel where the encoding is per channel): s = max(max|w| / 127, largest paired |w_i + w_j| / 128),
raised until the rounded int8 values' every pair adds to at most 128 in magnitude (255 * 128 =
32640); "all" gives every integer layer 7-bit weights, [-64, 63] (255 * 127 = 32385), as NNCF's
OverflowFix does. A layer's bias (int32 at input scale x weight scale) is re-encoded to match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

SCOPES = ("needed", "all", "none")
INT16_MAX, INT16_MIN = 32767, -32768
ACTIVATION_MAX = 255
SEVEN_BIT = (-64, 63)
_QDQ_OPS = ("Conv", "MatMul", "Gemm")
_INTEGER_OPS = {"MatMulInteger": 1, "ConvInteger": 1, "QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3}


@dataclass
class LayerBound:
    node: str
    op: str
    weight: str
    max_pair: int  # the largest sum of two positive weights of one output channel
    min_pair: int  # the most negative sum of two negative weights of one output channel
    seven_bit: bool

    @property
    def int16_range(self) -> Tuple[int, int]:
        return ACTIVATION_MAX * self.min_pair, ACTIVATION_MAX * self.max_pair

    @property
    def can_saturate(self) -> bool:
        lo, hi = self.int16_range
        return hi > INT16_MAX or lo < INT16_MIN

    def as_dict(self) -> Dict[str, object]:
        lo, hi = self.int16_range
        return {"node": self.node, "op": self.op, "weight": self.weight, "pair_sum_range": [lo, hi],
                "can_saturate": self.can_saturate, "seven_bit": self.seven_bit}


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: Dict[str, List[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def array(self, name: str) -> Optional[np.ndarray]:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def dq(self, name: str) -> Optional[onnx.NodeProto]:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None


def _rows(node: onnx.NodeProto, w: np.ndarray) -> np.ndarray:
    """The weight as [N, K]: one row per output channel."""
    if w.ndim >= 3:  # convolution weights [N, C/g, k...]
        return w.reshape(w.shape[0], -1)
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    if w.ndim == 1:
        w = w[:, None]
    return w if trans_b else w.T


def _row_pairs(rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per row, the largest sum of any two positive values and the most negative of any two negative ones."""
    r = np.sort(rows.astype(np.int64 if rows.dtype.kind in "iu" else np.float64), axis=1)
    if r.shape[1] < 2:
        r = np.pad(r, ((0, 0), (0, 2 - r.shape[1])))
    return np.clip(r[:, -2:], 0, None).sum(axis=1), np.clip(r[:, :2], None, 0).sum(axis=1)


def _pairs(rows: np.ndarray) -> Tuple[int, int]:
    pos, neg = _row_pairs(rows)
    return int(pos.max(initial=0)), int(neg.min(initial=0))


def _eight_bit_activation(g: _Graph, name: str) -> bool:
    dq = g.dq(name)
    if dq is None:
        return False
    zp = g.array(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    x = g.array(dq.input[0])
    dtype = zp.dtype if zp is not None else (x.dtype if x is not None else np.dtype(np.uint8))
    return dtype in (np.uint8, np.int8)


def _integer_layers(g: _Graph, model: onnx.ModelProto):
    """(node, weight initializer name) for every layer onnxruntime runs on a u8 x s8 kernel."""
    for node in model.graph.node:
        if node.op_type in _QDQ_OPS and len(node.input) > 1:
            wdq = g.dq(node.input[1])
            if wdq is not None and _eight_bit_activation(g, node.input[0]):
                w = g.array(wdq.input[0])
                if w is not None and w.dtype == np.int8:
                    yield node, wdq.input[0]
        elif node.op_type in _INTEGER_OPS and len(node.input) > _INTEGER_OPS[node.op_type]:
            w = g.array(node.input[_INTEGER_OPS[node.op_type]])
            if w is not None and w.dtype == np.int8:
                yield node, node.input[_INTEGER_OPS[node.op_type]]


def pair_bounds(model: onnx.ModelProto) -> List[LayerBound]:
    """The pair bound of every integer layer (empty for weight-only and fp32 models)."""
    g = _Graph(model)
    out = []
    for node, weight in _integer_layers(g, model):
        w = g.array(weight)
        high, low = _pairs(_rows(node, w))
        seven = bool(w.size) and int(w.min()) >= SEVEN_BIT[0] and int(w.max()) <= SEVEN_BIT[1]
        out.append(LayerBound(node.name or node.output[0], node.op_type, weight, high, low, seven))
    return out


def summary(bounds: List[LayerBound]) -> Dict[str, object]:
    """The report's view: how many integer layers, how many can saturate, each layer's bound."""
    return {"integer_layers": len(bounds), "can_saturate": sum(b.can_saturate for b in bounds),
            "seven_bit": sum(b.seven_bit for b in bounds), "layers": [b.as_dict() for b in bounds]}


# --- the fix --------------------------------------------------------------------------------


def _scale_of(g: _Graph, node: onnx.NodeProto, weight: str) -> Tuple[Optional[str], int]:
    """The weight's scale initializer and the axis it runs along (-1: per tensor)."""
    if node.op_type in _QDQ_OPS:
        dq = g.dq(node.input[1])
        scale = dq.input[1]
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        return scale, axis if g.array(scale).size > 1 else -1
    # quantize_dynamic: MatMulInteger/ConvInteger -> Cast -> Mul(., Mul(x_scale, w_scale))
    for cast in g.consumers.get(node.output[0], []):
        for mul in g.consumers.get(cast.output[0], []) if cast.op_type == "Cast" else []:
            other = [i for i in mul.input if i != cast.output[0]]
            scales = g.producer.get(other[0]) if other else None
            for name in (scales.input if scales is not None and scales.op_type == "Mul" else []):
                if name in g.inits:
                    size = g.array(name).size
                    return name, (-1 if size == 1 else (0 if node.op_type == "ConvInteger" else 1))
    return None, -1


def _source(fp32: Dict[str, np.ndarray], weight: str, q: np.ndarray, dequantised: np.ndarray) -> np.ndarray:
    """The fp32 weight the int8 one came from: by onnxruntime's `<name>_quantized` naming, zero-padded
    where a rewrite padded it, used only if it agrees with the int8 values; else the dequantised ones."""
    src = fp32.get(weight[: -len("_quantized")] if weight.endswith("_quantized") else weight)
    if src is None or src.ndim != q.ndim or any(a > b for a, b in zip(src.shape, q.shape)):
        return dequantised
    padded = np.zeros(q.shape, np.float32)
    padded[tuple(slice(0, d) for d in src.shape)] = src
    step = np.abs(dequantised - padded).max(initial=0)
    return padded if step <= np.abs(dequantised).max(initial=0) / 127 + 1e-12 else dequantised


def _broadcast(scale: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    if axis < 0:
        return scale.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape)


PAIR_LIMIT = 128  # 255 * 128 = 32640 <= 32767 and 255 * -128 = -32640 >= -32768


def _requantise_paired(node: onnx.NodeProto, w: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """The narrowest safe scale: int8 values whose every pair adds to at most PAIR_LIMIT in magnitude
    (per row where the scale is per channel), checked on the rounded values themselves."""
    per_row = axis >= 0
    rows = _rows(node, w)
    pair = np.maximum(*(np.abs(p) for p in _row_pairs(rows)))
    scale = np.maximum(np.abs(rows).max(axis=1) / 127, pair / PAIR_LIMIT)
    scale = np.where(scale > 0, scale, 1.0) if per_row else np.array(max(scale.max(initial=0), 0) or 1.0)
    for _ in range(64):
        q = np.clip(np.round(w / _broadcast(scale.astype(np.float32), axis, w.ndim)), -127, 127).astype(np.int8)
        worst = np.maximum(*(np.abs(p) for p in _row_pairs(_rows(node, q))))
        over = worst > PAIR_LIMIT
        if not over.any():
            return q, scale.astype(np.float32)
        scale = np.where(over, scale * (1 + 1 / 256), scale) if per_row else scale * (1 + 1 / 256)
    raise ValueError(f"{node.name}: no safe scale found for its weights")


def _requantise(w: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """7-bit symmetric int8 values and their scale (per tensor, or along axis)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis) if axis >= 0 else None
    amax = np.abs(w).max(axis=reduce) if axis >= 0 else np.abs(w).max(initial=0)
    scale = np.where(amax > 0, amax / SEVEN_BIT[1], 1.0).astype(np.float32)
    q = np.clip(np.round(w / _broadcast(scale, axis, w.ndim)), *SEVEN_BIT).astype(np.int8)
    return q, scale


def _set(g: _Graph, name: str, value: np.ndarray) -> None:
    g.inits[name].CopyFrom(numpy_helper.from_array(value, name))


def _fix_bias(g: _Graph, node: onnx.NodeProto, ratio: np.ndarray) -> None:
    """A QDQ bias is int32 at input scale x weight scale: keep its value at the new weight scale."""
    bdq = g.dq(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if node.op_type not in _QDQ_OPS or bdq is None or bdq.input[0] not in g.inits or bdq.input[1] not in g.inits:
        return
    bq, bs = g.array(bdq.input[0]), g.array(bdq.input[1])
    ratio = ratio.reshape(-1) if ratio.size > 1 else ratio.reshape(())
    _set(g, bdq.input[0], np.round(bq.astype(np.float64) / ratio).astype(np.int32))
    _set(g, bdq.input[1], (bs * ratio).astype(np.float32))


def fix_overflow(model: onnx.ModelProto, scope: str, fp32: Optional[onnx.ModelProto] = None) -> List[str]:
    """Re-encodes the weights of every integer layer that can saturate ("needed": the narrowest safe
    scale), of every integer layer ("all": 7 bits), or of none; in place. Returns the fixed layers' node names."""
    if scope not in SCOPES:
        raise ValueError(f"unknown overflow fix {scope!r}; one of {SCOPES}")
    if scope == "none":
        return []
    g = _Graph(model)
    source = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer} if fp32 is not None else {}
    bounds = {b.node: b for b in pair_bounds(model)}
    fixed, ratios = [], {}
    for node, weight in list(_integer_layers(g, model)):
        bound = bounds[node.name or node.output[0]]
        if (scope == "needed" and not bound.can_saturate) or weight not in g.inits:
            continue
        if weight not in ratios:
            ratios[weight] = _fix_weight(g, node, weight, source, scope)
        _fix_bias(g, node, ratios[weight])
        fixed.append(node.name or node.output[0])
    return fixed


def _fix_weight(g: _Graph, node: onnx.NodeProto, weight: str, source: Dict[str, np.ndarray], scope: str) -> np.ndarray:
    """Re-encodes one weight (7 bits for "all", the narrowest safe scale for "needed"); returns
    new scale / old scale."""
    scale_name, axis = _scale_of(g, node, weight)
    if scale_name is None or scale_name not in g.inits:
        raise ValueError(f"{node.name}: cannot find the scale of weight {weight!r} to re-encode it")
    q, scale = g.array(weight), g.array(scale_name)
    w = _source(source, weight, q, q.astype(np.float32) * _broadcast(scale, axis, q.ndim))
    q7, scale7 = _requantise(w, axis) if scope == "all" else _requantise_paired(node, w, axis)
    _set(g, weight, q7)
    _set(g, scale_name, scale7.reshape(scale.shape))
    return scale7.reshape(scale.shape) / scale
