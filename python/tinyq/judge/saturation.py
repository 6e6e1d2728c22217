"""Saturation: per quantised activation, the share of values clipped at its calibrated range.

An activation's QuantizeLinear maps x to round(x / scale) + zero_point, clipped to the integer
type's range; a value that lands above it is clipped, and so is one below it unless the zero point
sits at the bottom of the range: a range that starts at 0 is a fused Relu's, whose clipping of
negative values is the Relu itself. Calibrated on one distribution, ranges
clip inputs from another: the share clipped names the activations a shift breaks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import onnx
from onnx import numpy_helper

from tinyq.model import runner

_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}
CHUNK = 64


def _constants(graph: onnx.GraphProto) -> Dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def _quantised_activations(model: onnx.ModelProto) -> List[Tuple[str, float, int, int, int]]:
    """(activation, scale, zero point, qmin, qmax) for each per-tensor QuantizeLinear of an activation."""
    consts = _constants(model.graph)
    found = {}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in consts or n.input[1] not in consts:
            continue
        scale = consts[n.input[1]]
        zp = consts[n.input[2]] if len(n.input) > 2 and n.input[2] in consts else np.zeros((), np.uint8)
        if scale.size != 1 or zp.dtype not in _RANGES:
            continue
        qmin, qmax = _RANGES[zp.dtype]
        found.setdefault(n.input[0], (n.input[0], float(scale.ravel()[0]), int(zp.ravel()[0]), qmin, qmax))
    return list(found.values())


_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _compute_nodes(graph: onnx.GraphProto) -> Dict[str, List[onnx.NodeProto]]:
    """The graph's nodes by op type, in order, without quantisation ops and Constants."""
    by_op: Dict[str, List[onnx.NodeProto]] = {}
    for n in graph.node:
        if n.op_type not in _QDQ and n.op_type != "Constant":
            by_op.setdefault(n.op_type, []).append(n)
    return by_op


def fp32_names(int8: onnx.ModelProto, fp32: Optional[onnx.ModelProto]) -> Dict[str, str]:
    """{int8 activation: what the user knows it as}. Compaction renames an artefact's tensors ("36"):
    an activation made by the k-th node of some op type is named after the k-th node of that type in
    the fp32 graph (its output's name) when both graphs hold as many; otherwise "<op> #k output"."""
    by_op8, by_op32 = _compute_nodes(int8.graph), _compute_nodes(fp32.graph) if fp32 is not None else {}
    names = {i.name: i.name for i in int8.graph.input}
    for op, nodes in by_op8.items():
        twins = by_op32.get(op, [])
        for k, node in enumerate(nodes):
            for j, out in enumerate(node.output):
                known = len(twins) == len(nodes) and j < len(twins[k].output)
                names[out] = twins[k].output[j] if known else f"{op} #{k + 1} output" + (f" {j}" if j else "")
    return names


def clipped_shares(int8: Union[Path, str, bytes], feeds: Dict[str, np.ndarray],
                   fp32: Optional[Union[Path, str]] = None) -> Dict[str, float]:
    """{activation: share of its values clipped} over every sample of feeds; empty for a model
    with no quantised activation (weight-only). Activations are named as in the fp32 model, when
    given (fp32_names)."""
    model = onnx.load_from_string(int8) if isinstance(int8, bytes) else onnx.load(str(int8))
    labels = fp32_names(model, onnx.load(str(fp32)) if fp32 is not None else None)
    acts = _quantised_activations(model)
    if not acts:
        return {}
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(a[0], onnx.TensorProto.FLOAT, None)
                              for a in acts if a[0] not in known)
    sess = runner.session(model.SerializeToString())
    names = [a[0] for a in acts]
    clipped, total = np.zeros(len(acts)), np.zeros(len(acts))
    n = len(next(iter(feeds.values())))
    step = runner.fixed_batch(sess) or CHUNK
    for start in range(0, n, step):
        values = sess.run(names, {k: v[start:start + step] for k, v in feeds.items()})
        for j, ((_, scale, zp, qmin, qmax), x) in enumerate(zip(acts, values)):
            q = np.round(np.asarray(x, np.float64) / scale) + zp
            low = (q < qmin) if zp > qmin else np.zeros(q.shape, bool)
            clipped[j] += np.count_nonzero(low | (q > qmax))
            total[j] += q.size
    return {labels.get(name, name): float(c / t) if t else 0.0 for name, c, t in zip(names, clipped, total)}
