"""Kernel-aware rewrites of a static QDQ graph, and the check that every QLinearConv takes
onnxruntime's fused int8 path.

onnxruntime's CPU QLinearConv packs its weights for MLAS's symmetric indirect convolution
(MlasConvSym*, AVX-512 VNNI on this machine) only when (qlinearconv.cc TryConvSymPrepack,
mlas/lib/convsym.cpp MlasConvSymPackWSize):
  - the weights are int8 with every zero point 0;
  - group 1: input channels % 4 == 0, output channels >= 16 and % 4 == 0;
  - depthwise (one input and one output channel per group): the group count % 16 == 0.
Any other QLinearConv runs image by image as an NCHW -> NHWC transpose, im2col, a GEMM into int32
and a separate requantisation, and on few-channel stems it is slower than fp32's NCHWc Conv.

Each rewrite changes no output, only the shapes the kernels see:
  - pad_conv_inputs: a Conv with input channels not a multiple of 4 reads its uint8 input
    through a Pad that adds channels holding the input's zero point (which dequantises to 0
    exactly), and its int8 weights gain zero input columns;
  - pad_conv_outputs: a Conv with fewer than 16 output channels, or not a multiple of 4, gains
    zero output rows (weight scale 1, bias 0 with scale = input scale, as onnxruntime's fusion
    requires), and a Slice on its uint8 output drops them again before any consumer reads it.
Rewrites act on quantize_static's QDQ output before compaction, so the recipe that names them
(ptq_static --rewrite) rebuilds the artefact byte for byte.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

INPUT_ALIGN = 4  # input channels per group, a multiple of this
OUTPUT_ALIGN = 4  # output channels, a multiple of this ...
MIN_OUTPUTS = 16  # ... and at least this many
DEPTHWISE_GROUP_ALIGN = 16


def _ceil(n: int, k: int) -> int:
    return (n + k - 1) // k * k


class _Graph:
    """Producers, consumers and initialisers of a graph, for rewiring in place."""

    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.nodes = list(self.graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: Dict[str, List[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.outputs = {o.name for o in self.graph.output}
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.before: Dict[int, List[onnx.NodeProto]] = {}
        self.after: Dict[int, List[onnx.NodeProto]] = {}

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def set_array(self, name: str, value: np.ndarray) -> None:
        self.inits[name].CopyFrom(numpy_helper.from_array(value, name))

    def add_array(self, name: str, value: np.ndarray) -> str:
        t = numpy_helper.from_array(value, name)
        self.graph.initializer.append(t)
        self.inits[name] = self.graph.initializer[-1]
        return name

    def dq_of(self, tensor: str) -> Optional[onnx.NodeProto]:
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    def insert(self, anchor: onnx.NodeProto, nodes: Sequence[onnx.NodeProto], after: bool = False) -> None:
        """Queues nodes just before (or after) anchor; commit() places them."""
        (self.after if after else self.before).setdefault(self.index[id(anchor)], []).extend(nodes)

    def commit(self) -> None:
        """Places the queued nodes, then drops the nodes and initialisers nothing reads any more."""
        nodes = []
        for i, n in enumerate(self.nodes):
            nodes += [*self.before.get(i, []), n, *self.after.get(i, [])]
        read = set(self.outputs)
        live = []
        for n in reversed(nodes):
            if any(o in read for o in n.output):
                live.append(n)
                read.update(n.input)
        del self.graph.node[:]
        self.graph.node.extend(reversed(live))
        kept = [t for t in self.graph.initializer if t.name in read]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)


@dataclass
class QuantConv:
    """A Conv of a QDQ graph fed by DequantizeLinear on its input and on int8 weights with zero points 0,
    the weights its own (a shared weight is never padded)."""

    node: onnx.NodeProto
    x_dq: onnx.NodeProto
    w_dq: onnx.NodeProto
    weight: np.ndarray

    @property
    def channels(self):
        return self.weight.shape[0], self.weight.shape[1]


def _quant_convs(g: _Graph) -> List[QuantConv]:
    found = []
    for node in g.nodes:
        if node.op_type != "Conv" or _attr(node, "group", 1) != 1 or len(node.input) < 2:
            continue
        x_dq, w_dq = g.dq_of(node.input[0]), g.dq_of(node.input[1])
        if x_dq is None or w_dq is None or w_dq.input[0] not in g.inits:
            continue
        if len(g.consumers.get(w_dq.output[0], [])) != 1 or len(g.consumers.get(w_dq.input[0], [])) != 1:
            continue  # a weight shared with another node: padding it would change that node too
        w = g.array(w_dq.input[0])
        zero = g.array(w_dq.input[2]) if len(w_dq.input) > 2 and w_dq.input[2] else np.zeros(1, np.int8)
        if w.dtype == np.int8 and not zero.any() and w.ndim >= 3:
            found.append(QuantConv(node, x_dq, w_dq, w))
    return found


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def pad_conv_inputs(g: _Graph) -> List[str]:
    """Input channels up to a multiple of INPUT_ALIGN; returns what it changed."""
    done = []
    for c in _quant_convs(g):
        cout, cin = c.channels
        if cin % INPUT_ALIGN == 0:
            continue
        padded = _ceil(cin, INPUT_ALIGN)
        q, scale, zero = c.x_dq.input[0], c.x_dq.input[1], c.x_dq.input[2]
        tag = c.node.output[0]
        pads = np.zeros(2 * c.weight.ndim, np.int64)
        pads[c.weight.ndim + 1] = padded - cin
        pad = helper.make_node("Pad", [q, g.add_array(f"{tag}_pad_pads", pads), g.add_array(f"{tag}_pad_value", g.array(zero))],
                               [f"{tag}_pad_q"], mode="constant")
        dq = helper.make_node("DequantizeLinear", [pad.output[0], g.add_array(f"{tag}_pad_scale", g.array(scale)),
                                                   g.add_array(f"{tag}_pad_zero", g.array(zero))], [f"{tag}_pad_x"])
        g.insert(c.node, [pad, dq])
        c.node.input[0] = dq.output[0]
        w = np.zeros((cout, padded, *c.weight.shape[2:]), np.int8)
        w[:, :cin] = c.weight
        g.set_array(c.w_dq.input[0], w)
        done.append(f"{c.node.name or tag}: input channels {cin} -> {padded}")
    return done


def _pad_rows(g: _Graph, name: str, rows: int, fill) -> None:
    a = g.array(name)
    g.set_array(name, np.concatenate([a, np.full((rows - a.shape[0], *a.shape[1:]), fill, a.dtype)]))


def _pad_dq_rows(g: _Graph, dq: onnx.NodeProto, rows: int, data: bool, scale_fill: float) -> None:
    """Pads a DequantizeLinear's rows along axis 0: its data (when `data`) with 0, and its scale
    (with scale_fill) and zero point (with 0) where they are per channel; a per-tensor scale stays."""
    if data:
        _pad_rows(g, dq.input[0], rows, 0)
    scale = g.array(dq.input[1])
    if _attr(dq, "axis", None) is None and scale.size <= 1:
        return
    _pad_rows(g, dq.input[1], rows, scale_fill)
    if len(dq.input) > 2 and dq.input[2]:
        _pad_rows(g, dq.input[2], rows, 0)


def _as_per_channel(g: _Graph, dq: onnx.NodeProto) -> None:
    """A one-channel DequantizeLinear written per tensor (scalar scale) made per channel (axis 0),
    as its per-channel weights are once padded."""
    if _attr(dq, "axis", None) is not None:
        return
    for name in dq.input[1:]:
        if name:
            g.set_array(name, g.array(name).reshape(1))
    dq.attribute.append(helper.make_attribute("axis", 0))


def pad_conv_outputs(g: _Graph) -> List[str]:
    """Output channels up to at least MIN_OUTPUTS and a multiple of OUTPUT_ALIGN, sliced back
    after the output's QuantizeLinear; returns what it changed."""
    done = []
    for c in _quant_convs(g):
        cout, _ = c.channels
        readers = g.consumers.get(c.node.output[0], [])
        if (cout >= MIN_OUTPUTS and cout % OUTPUT_ALIGN == 0) or c.node.output[0] in g.outputs:
            continue
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or readers[0].output[0] in g.outputs:
            continue
        padded = max(MIN_OUTPUTS, _ceil(cout, OUTPUT_ALIGN))
        w = np.zeros((padded, *c.weight.shape[1:]), np.int8)
        w[:cout] = c.weight
        g.set_array(c.w_dq.input[0], w)
        _pad_dq_rows(g, c.w_dq, padded, data=False, scale_fill=1.0)
        bias_dq = g.dq_of(c.node.input[2]) if len(c.node.input) > 2 and c.node.input[2] else None
        if bias_dq is not None:  # onnxruntime fuses it only with bias scale = input scale x weight scale
            if _attr(c.w_dq, "axis", None) is not None:
                _as_per_channel(g, bias_dq)
            _pad_dq_rows(g, bias_dq, padded, data=True, scale_fill=float(g.array(c.x_dq.input[1])))
        q = readers[0].output[0]
        tag = c.node.output[0]
        sliced = helper.make_node("Slice", [q, g.add_array(f"{tag}_slice_starts", np.array([0], np.int64)),
                                            g.add_array(f"{tag}_slice_ends", np.array([cout], np.int64)),
                                            g.add_array(f"{tag}_slice_axes", np.array([1], np.int64))], [f"{tag}_sliced"])
        for reader in g.consumers.get(q, []):
            reader.input[:] = [sliced.output[0] if i == q else i for i in reader.input]
        g.insert(readers[0], [sliced], after=True)
        done.append(f"{c.node.name or tag}: output channels {cout} -> {padded}")
    return done


REWRITES: Dict[str, Callable[[_Graph], List[str]]] = {
    "pad_conv_inputs": pad_conv_inputs,
    "pad_conv_outputs": pad_conv_outputs,
}


def check_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in REWRITES]
    if unknown:
        raise ValueError(f"unknown rewrite(s) {', '.join(unknown)}; known: {', '.join(REWRITES)}")


def apply(model: onnx.ModelProto, names: Sequence[str]) -> List[str]:
    """Applies the named rewrites in place, in REWRITES order; returns what each changed."""
    check_names(names)
    changes = []
    for name in (n for n in REWRITES if n in names):
        g = _Graph(model)
        done = REWRITES[name](g)
        if done:
            g.commit()
        changes += [f"{name}: {c}" for c in done]
    if changes:
        onnx.checker.check_model(model)
    return changes


# --- the check -------------------------------------------------------------------------------


@dataclass
class ConvKernel:
    """One QLinearConv of onnxruntime's optimised graph, and the fused-path conditions it misses."""

    input_channels: int  # per group
    output_channels: int
    group: int
    misses: List[str] = field(default_factory=list)
    fixed_by: List[str] = field(default_factory=list)  # the rewrites (REWRITES) that would fix a miss

    @property
    def fused(self) -> bool:
        return not self.misses

    def as_dict(self) -> Dict[str, object]:
        return {"input_channels": self.input_channels, "output_channels": self.output_channels, "group": self.group,
                "fused_path": self.fused, "misses": self.misses}


def _misses(w: np.ndarray, zero: np.ndarray, group: int) -> Tuple[List[str], List[str]]:
    """(the fused path's conditions the QLinearConv misses, the rewrites that would fix them)."""
    out, cin = w.shape[0], w.shape[1]
    misses, fixed_by = [], []
    if w.dtype != np.int8:
        misses.append(f"weights are {w.dtype}, not int8")
    if zero.any():
        misses.append("weight zero points are not all 0")
    if group > 1:
        if not (cin == 1 and out == group):
            misses.append(f"grouped ({group} groups) but not depthwise")
        elif group % DEPTHWISE_GROUP_ALIGN:
            misses.append(f"depthwise with {group} groups, not a multiple of {DEPTHWISE_GROUP_ALIGN}")
        return misses, fixed_by
    if cin % INPUT_ALIGN:
        misses.append(f"{cin} input channels, not a multiple of {INPUT_ALIGN} (rewrite pad_conv_inputs)")
        fixed_by.append("pad_conv_inputs")
    if out < MIN_OUTPUTS or out % OUTPUT_ALIGN:
        misses.append(f"{out} output channels, not >= {MIN_OUTPUTS} and a multiple of {OUTPUT_ALIGN} (rewrite pad_conv_outputs)")
        fixed_by.append("pad_conv_outputs")
    return misses, fixed_by


def optimised(int8: bytes) -> onnx.ModelProto:
    """onnxruntime's optimised graph of the model (extended level: the QDQ fusions, stable across machines)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="tinyq_optimised_") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        ort.InferenceSession(int8, opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


def conv_kernels(int8: bytes) -> List[ConvKernel]:
    """Every QLinearConv of onnxruntime's optimised graph, in graph order, with what it misses of
    the fused path's conditions."""
    return kernels(optimised(int8))


def kernels(optimised_model: onnx.ModelProto) -> List[ConvKernel]:
    """conv_kernels() on a graph onnxruntime already optimised (optimised())."""
    g = _Graph(optimised_model)
    found = []
    for node in optimised_model.graph.node:
        if node.op_type != "QLinearConv":
            continue
        w = g.array(node.input[3])
        zero = g.array(node.input[5]) if len(node.input) > 5 and node.input[5] in g.inits else np.zeros(1, np.int8)
        group = _attr(node, "group", 1)
        found.append(ConvKernel(int(w.shape[1]), int(w.shape[0]), int(group), *_misses(w, zero, group)))
    return found
