"""Where a model's time goes: onnxruntime's per-node profile, one thread, and the ceiling an int8
model would reach if every convolution ran at its trunk's int8 speed.

The profile is onnxruntime's own (SessionOptions.enable_profiling): each node's kernel time,
the median over the timed runs after one warm-up run, the fp32 and int8 models' runs interleaved.
Op types are onnxruntime's, after its graph optimisations (fp32: Conv, FusedConv, ReorderInput/Output
of the NCHWc layout; int8: QLinearConv, QGemm, QuantizeLinear, ...).

Overhead is what quantisation adds around the int8 kernels: QuantizeLinear, DequantizeLinear,
layout Transposes, and the Pad and Slice of tinyq.quant.rewrites. The trunk is every QLinearConv with at
least TRUNK_CHANNELS input channels and channels aligned for the fused int8 path; its speed is its
multiply-accumulates per millisecond. The
ceiling keeps every other node's measured int8 time and runs each convolution's multiply-accumulates
(the fp32 model's, unpadded) at the trunk's speed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx

from tinyq.quant import rewrites

OVERHEAD_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Transpose", "Pad", "Slice",
                "ReorderInput", "ReorderOutput"}
CONV_OPS = {"Conv", "FusedConv", "NhwcFusedConv", "QLinearConv"}
TRUNK_CHANNELS = 16


@dataclass
class NodeTime:
    name: str
    op: str
    ms: float
    macs: Optional[int] = None  # multiply-accumulates of a QLinearConv, from its profiled shapes
    input_channels: int = 0  # a QLinearConv's, per group
    output_channels: int = 0

    @property
    def trunk(self) -> bool:
        """A QLinearConv of the trunk: at least TRUNK_CHANNELS input channels, and channels that
        meet the fused int8 path's alignment (tinyq.quant.rewrites)."""
        return (self.input_channels >= TRUNK_CHANNELS and self.input_channels % rewrites.INPUT_ALIGN == 0
                and self.output_channels >= rewrites.MIN_OUTPUTS and self.output_channels % rewrites.OUTPUT_ALIGN == 0)


def _shape(entry: Dict[str, List[int]]) -> List[int]:
    return next(iter(entry.values()))


def _node(name: str, args: Dict, ms: float, weights: Dict[str, List[int]]) -> NodeTime:
    """A node's time; a QLinearConv's multiply-accumulates from its output's profiled shape and its
    weight's shape in the session's optimised graph (the profile has the weight prepacked, shapeless)."""
    if args.get("op_name") != "QLinearConv" or name not in weights:
        return NodeTime(name, args["op_name"], ms)
    weight, out = weights[name], _shape(args["output_type_shape"][0])
    macs = int(np.prod(out, dtype=np.int64) * np.prod(weight[1:], dtype=np.int64))
    return NodeTime(name, "QLinearConv", ms, macs, weight[1], weight[0])


def _conv_weights(optimised: str) -> Dict[str, List[int]]:
    model = onnx.load(optimised)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    return {n.name: shapes[n.input[3]] for n in model.graph.node if n.op_type == "QLinearConv" and n.input[3] in shapes}


def _profiled_session(model: Union[str, bytes], tmp: str, tag: str):
    """(session profiling every node, its QLinearConv weight shapes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.log_severity_level = 3  # the optimised graph is saved only to read weight shapes
    opts.profile_file_prefix = os.path.join(tmp, f"profile_{tag}")
    opts.optimized_model_filepath = os.path.join(tmp, f"optimised_{tag}.onnx")
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return sess, _conv_weights(opts.optimized_model_filepath)


def _node_times(events: List[Dict], weights: Dict[str, List[int]]) -> List[NodeTime]:
    durations: Dict[str, List[float]] = defaultdict(list)
    first: Dict[str, Dict] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            durations[name].append(e["dur"] / 1e3)
            first.setdefault(name, e["args"])
    return [_node(name, first[name], float(np.median(d[1:] if len(d) > 1 else d)), weights) for name, d in durations.items()]


def node_times(models: Sequence[Union[str, bytes]], feeds: Dict[str, np.ndarray], runs: int = 5) -> List[List[NodeTime]]:
    """Each model's per-node median kernel times over `runs` runs after a warm-up, one onnxruntime
    thread, the models' runs interleaved (a, b, a, b, ...) so that drift hits them alike."""
    with tempfile.TemporaryDirectory(prefix="tinyq_profile_") as tmp:
        sessions = [_profiled_session(m, tmp, str(k)) for k, m in enumerate(models)]
        for _ in range(runs + 1):
            for sess, _ in sessions:
                sess.run(None, feeds)
        out = []
        for sess, weights in sessions:
            with open(sess.end_profiling()) as f:
                out.append(_node_times(json.load(f), weights))
        return out


def by_op(times: List[NodeTime]) -> Dict[str, float]:
    out: Dict[str, float] = defaultdict(float)
    for t in times:
        out[t.op] += t.ms
    return dict(out)


def conv_macs(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> int:
    """The multiply-accumulates of every Conv of an fp32 model at the feeds' shapes."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i in model.graph.input:
        if i.name in feeds:
            dims = i.type.tensor_type.shape.dim
            for d, n in zip(dims, feeds[i.name].shape):
                d.Clear()
                d.dim_value = int(n)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
    shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output})
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    return sum(int(np.prod(shapes[n.output[0]], dtype=np.int64) * np.prod(weights[n.input[1]][1:], dtype=np.int64))
               for n in model.graph.node if n.op_type == "Conv")


@dataclass
class Breakdown:
    fp32_ms: float
    int8_ms: float
    overhead_ms: float  # of int8_ms
    fp32_ops: Dict[str, float]
    int8_ops: Dict[str, float]
    ceiling_int8_ms: Optional[float]  # None: no trunk convolution to take the speed from
    convs: List[NodeTime] = field(default_factory=list)  # the int8 model's QLinearConvs, in run order

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms

    @property
    def ceiling_speedup(self) -> Optional[float]:
        return None if self.ceiling_int8_ms is None else self.fp32_ms / self.ceiling_int8_ms

    def as_dict(self) -> Dict[str, object]:
        return {"fp32_ms": self.fp32_ms, "int8_ms": self.int8_ms, "overhead_ms": self.overhead_ms,
                "overhead_share": self.overhead_ms / self.int8_ms, "speedup": self.speedup,
                "ceiling_int8_ms": self.ceiling_int8_ms, "ceiling_speedup": self.ceiling_speedup,
                "fp32_ops_ms": self.fp32_ops, "int8_ops_ms": self.int8_ops,
                "qlinearconvs": [{"input_channels": t.input_channels, "output_channels": t.output_channels, "macs": t.macs,
                                  "ms": t.ms, "trunk": t.trunk} for t in self.convs]}


def breakdown(fp32: onnx.ModelProto, int8: bytes, feeds: Dict[str, np.ndarray], runs: int = 9) -> Breakdown:
    """fp32 and int8 profiled on the same feeds, their runs interleaved, and the ceiling."""
    t32, t8 = node_times([fp32.SerializeToString(), int8], feeds, runs)
    trunk = [t for t in t8 if t.macs and t.trunk]
    ceiling = None
    if trunk:
        rate = sum(t.macs for t in trunk) / sum(t.ms for t in trunk)
        rest = sum(t.ms for t in t8 if t.op not in CONV_OPS)
        ceiling = rest + conv_macs(fp32, feeds) / rate
    return Breakdown(sum(t.ms for t in t32), sum(t.ms for t in t8), sum(t.ms for t in t8 if t.op in OVERHEAD_OPS),
                     by_op(t32), by_op(t8), ceiling, [t for t in t8 if t.macs])

