"""Which layers make an int8 model slower than fp32: onnxruntime's per-node profile of both
(tinyq.search.profile), each profiled node charged to the fp32 layer it computes.

A layer is a weighted op (Conv, Gemm, MatMul, GRU, ...: tinyq.model.weights) with the weightless
ops after it up to the next weighted op: a convolution with its BatchNorm, activation, pooling
and the residual Add it feeds last. Ops before any weighted op head their own layer.

The int8 model must be profiled before compaction (tinyq.quant.quantize.quantize_static_qdq with
compact=False), which keeps the fp32 node names onnxruntime's fused nodes carry: a QLinearConv is
"<Conv's name>_token_<k>", a quantiser "<tensor>_QuantizeLinear", an fp32 NCHWc convolution
"<its output>_nchwc". A node with no such name (a Transpose onnxruntime inserts, the HardSigmoid
and Mul it splits Hardswish into) is charged to the node that ran just before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx

from tinyq.model import weights
from tinyq.search import profile

_TOKEN = re.compile(r"_token_\d+$")
_TENSOR_SUFFIXES = ("_nchwc", "_QuantizeLinear", "_DequantizeLinear")
SLOWER_BY = 0.05  # a layer is slow when its int8 time exceeds its fp32 time by more than this share ...
MIN_LOSS_SHARE = 0.01  # ... and the excess is at least this share of the whole fp32 model's time


@dataclass(frozen=True)
class LayerCost:
    head: str  # the fp32 node that heads the layer
    nodes: Tuple[str, ...]  # its fp32 nodes, in graph order
    fp32_ms: float
    int8_ms: float  # its int8 kernels with the quantisers and layout changes around them

    def as_dict(self, slow: bool) -> Dict[str, object]:
        return {"layer": self.head, "nodes": list(self.nodes), "fp32_ms": self.fp32_ms, "int8_ms": self.int8_ms,
                "slow": slow}


def layers(model: onnx.ModelProto) -> Dict[str, str]:
    """{fp32 node name: the head of its layer}; a weightless node joins the layer of the input
    computed last (a residual Add joins the branch it closes). Constants are in no layer: they never run."""
    weighted = {n.name for n, _ in weights.weight_inputs(model.graph.node)}
    producer: Dict[str, int] = {}
    heads: Dict[str, str] = {}
    order: Dict[int, str] = {}
    for i, n in enumerate(model.graph.node):
        if n.op_type == "Constant":
            continue
        ups = [producer[t] for t in n.input if t in producer]
        heads[n.name] = n.name if n.name in weighted or not ups else heads[order[max(ups)]]
        order[i] = n.name
        for t in n.output:
            producer[t] = i
    return {k: v for k, v in heads.items() if k}


class _Attribution:
    """Maps an optimised graph's profiled node to the fp32 node it computes, by name."""

    def __init__(self, model: onnx.ModelProto):
        self.names = {n.name for n in model.graph.node if n.name}
        self.producer = {t: n.name for n in model.graph.node for t in n.output}
        self.consumer: Dict[str, str] = {}
        for n in model.graph.node:
            for t in n.input:
                self.consumer.setdefault(t, n.name)

    def __call__(self, name: str) -> Optional[str]:
        base = _TOKEN.sub("", name)
        if base in self.names:
            return base
        for suffix in _TENSOR_SUFFIXES:
            if base.endswith(suffix):
                tensor = base[: -len(suffix)]
                return self.producer.get(tensor) or self.consumer.get(tensor)
        return None


def charge(times: Iterable[profile.NodeTime], fp32: onnx.ModelProto) -> Dict[str, float]:
    """{layer head: ms}: each profiled node, in run order, charged to the layer of the fp32 node it
    computes, or to the previous node's layer when its name names none."""
    return _charge(times, _Attribution(fp32), layers(fp32))


def _charge(times: Iterable[profile.NodeTime], attribute: _Attribution, head: Dict[str, str]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    last: Optional[str] = None
    for t in times:
        node = attribute(t.name)
        layer = head.get(node) if node else last
        layer = layer or last or "(before any layer)"
        out[layer] = out.get(layer, 0.0) + t.ms
        last = layer
    return out


def layer_costs(fp32: onnx.ModelProto, int8_named: Union[str, bytes], feeds: Dict[str, np.ndarray],
                runs: int = 5) -> List[LayerCost]:
    """Each layer's fp32 and int8 time on the feeds (one thread, runs interleaved, medians), in
    graph order."""
    t32, t8 = profile.node_times([fp32.SerializeToString(), int8_named], feeds, runs)
    head, attribute = layers(fp32), _Attribution(fp32)
    ms32, ms8 = _charge(t32, attribute, head), _charge(t8, attribute, head)
    members: Dict[str, List[str]] = {}
    for node, h in head.items():
        members.setdefault(h, []).append(node)
    order = [h for h in dict.fromkeys(head.values()) if h in ms32 or h in ms8]
    extra = [h for h in (*ms32, *ms8) if h not in head.values()]
    return [LayerCost(h, tuple(members.get(h, ())), ms32.get(h, 0.0), ms8.get(h, 0.0)) for h in order + list(dict.fromkeys(extra))]


def slow_layers(costs: Sequence[LayerCost]) -> List[LayerCost]:
    """The layers int8 makes slower: by more than SLOWER_BY of their own fp32 time and by at least
    MIN_LOSS_SHARE of the model's (a 0.01 ms head is not worth the quantisers around it)."""
    floor = MIN_LOSS_SHARE * sum(c.fp32_ms for c in costs)
    return [c for c in costs if c.nodes and c.int8_ms > c.fp32_ms * (1 + SLOWER_BY) and c.int8_ms - c.fp32_ms >= floor]


def as_dicts(costs: Sequence[LayerCost]) -> List[Dict[str, object]]:
    slow = {c.head for c in slow_layers(costs)}
    return [c.as_dict(c.head in slow) for c in costs]


def table(costs: Sequence[LayerCost]) -> str:
    """The cost table in Markdown: each layer's fp32 and int8 ms and whether int8 makes it slower."""
    slow = {c.head for c in slow_layers(costs)}
    lines = ["| layer (fp32 node heading it) | ops | fp32 ms | int8 ms | ×fp32 | |", "|---|---|---|---|---|---|"]
    for c in costs:
        speed = f"{c.fp32_ms / c.int8_ms:.2f}" if c.int8_ms else ""
        lines.append(f"| {c.head} | {len(c.nodes)} | {c.fp32_ms:.3f} | {c.int8_ms:.3f} | {speed} | {'slower' if c.head in slow else ''} |")
    return "\n".join(lines) + "\n"
