"""The regions of a graph that must go back to fp32 together in auto mode: ops with no int8 kernel,
and the quantisable ops caught between them (e.g. an MSCN block from x**2 through its division)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import onnx

from tinyq.quant import quantize

# Static QDQ gives quantisers to the ops with int8 kernels in onnxruntime's CPU provider, and to
# Relu and Clip, which fuse into the int8 kernel before them (quantize.STATIC_OP_TYPES).
OP_TYPES_TO_QUANTIZE = quantize.STATIC_OP_TYPES
# Ops that move or reshape data, or reduce it, without arithmetic that int8 would break.
_NEUTRAL_OPS = {"Constant", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Shape", "Gather",
                "Cast", "ReduceMean", "Slice", "Split", "Expand", "Pad", "Resize"}
# Quantisable ops that join a region when they only feed it or only read from it.
_EDGE_OPS = {"Add", "Mul", "AveragePool", "MaxPool", "GlobalAveragePool", "Relu", "Clip"}
MAX_GAP = 3  # quantisable ops between two no-int8 ops that still make one region


@dataclass(frozen=True)
class FallbackGroup:
    name: str  # "<first node>..<last node>"
    nodes: Tuple[str, ...]  # every node of the region, in graph order
    quantizable: Tuple[str, ...]  # the ones that would otherwise get quantisers


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        inits = {t.name for t in model.graph.initializer}
        constants = {o for n in self.nodes if n.op_type == "Constant" for o in n.output}
        self.static = inits | constants
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output}
        self.consumers: Dict[str, List[int]] = {}
        for i, n in enumerate(self.nodes):
            for t in n.input:
                self.consumers.setdefault(t, []).append(i)

    def successors(self, i: int) -> List[int]:
        return sorted({c for o in self.nodes[i].output for c in self.consumers.get(o, [])})

    def activation_producers(self, i: int) -> Set[int]:
        return {self.producer[t] for t in self.nodes[i].input if t and t not in self.static and t in self.producer}

    def no_int8(self, i: int) -> bool:
        op = self.nodes[i].op_type
        return op not in OP_TYPES_TO_QUANTIZE and op not in _NEUTRAL_OPS


def _paths_to_no_int8(g: _Graph, start: int) -> Iterable[Tuple[int, List[int]]]:
    """(end, nodes between) for each no-int8 node reachable from start through at most MAX_GAP others."""
    stack = [(s, []) for s in g.successors(start)]
    while stack:
        node, between = stack.pop()
        if g.no_int8(node):
            yield node, between
        elif len(between) < MAX_GAP:
            stack.extend((s, between + [node]) for s in g.successors(node))


def _grow(g: _Graph, members: Set[int]) -> None:
    """Adds edge ops that only feed the region, or only read from it, until nothing changes."""
    changed = True
    while changed:
        changed = False
        for i, n in enumerate(g.nodes):
            if i in members or n.op_type not in _EDGE_OPS:
                continue
            feeds = set(g.successors(i))
            reads = g.activation_producers(i)
            if (feeds and feeds <= members) or (reads and reads <= members):
                members.add(i)
                changed = True


_LAYER_OPS = {"Conv", "Gemm", "MatMul"}


def _stem(g: _Graph, graph_inputs: Sequence[str]) -> Set[int]:
    """Every node from the graph inputs up to the first Conv/Gemm/MatMul on each path, with the
    Relu/Clip fused after it: the input layer, whose few input channels gain least from int8.
    A Shape node ends its path: what reads an input's shape (torch's dynamo exports compute the
    flatten size from it) is not fed by its values."""
    members: Set[int] = set()
    stack = [c for name in graph_inputs for c in g.consumers.get(name, [])]
    while stack:
        i = stack.pop()
        if i in members:
            continue
        members.add(i)
        if g.nodes[i].op_type in _LAYER_OPS:
            members.update(s for s in g.successors(i) if g.nodes[s].op_type in ("Relu", "Clip"))
        elif g.nodes[i].op_type != "Shape":
            stack.extend(g.successors(i))
    return members


def _group(g: _Graph, members: Set[int], prefix: str = "") -> Optional[FallbackGroup]:
    order = sorted(members)
    quantizable = tuple(g.nodes[i].name for i in order if g.nodes[i].op_type in OP_TYPES_TO_QUANTIZE)
    if not quantizable:
        return None
    names = tuple(g.nodes[i].name for i in order)
    return FallbackGroup(f"{prefix}{names[0]}..{names[-1]}", names, quantizable)


def fallback_groups(model: onnx.ModelProto) -> List[FallbackGroup]:
    """Regions that may go back to fp32: each region of ops with no int8 kernel (with the
    quantisable ops caught in it), and the input stem. Only those holding a quantisable op."""
    g = _Graph(model)
    parent = list(range(len(g.nodes)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seeds = [i for i in range(len(g.nodes)) if g.no_int8(i)]
    extra: Dict[int, Set[int]] = {}
    for u in seeds:
        for v, between in _paths_to_no_int8(g, u):
            parent[find(v)] = find(u)
            extra.setdefault(u, set()).update(between)
    regions: Dict[int, Set[int]] = {}
    for u in seeds:
        regions.setdefault(find(u), set()).update({u, *extra.get(u, ())})
    for members in regions.values():
        _grow(g, members)
    inputs = [i.name for i in model.graph.input if i.name not in g.static]
    found = [_group(g, m) for m in regions.values()] + [_group(g, _stem(g, inputs), "stem:")]
    unique = {grp.quantizable: grp for grp in found if grp is not None}
    return sorted(unique.values(), key=lambda grp: grp.nodes)
