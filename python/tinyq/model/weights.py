"""What an int8 artefact quantised: its weights counted, and the weight ops it left in fp32, with why.

A weight is a float initialiser of rank >= 2 feeding the weight input of a weight-bearing op
(Conv, ConvTranspose, MatMul, Gemm, the table of a Gather: embeddings, and the input and
recurrence weights W and R of a GRU, LSTM or RNN). In an artefact it is quantised when it is stored as int8 or
uint8: behind a DequantizeLinear (weight-only, static QDQ) or fed to an integer kernel
(MatMulInteger, ConvInteger, QLinear*; onnxruntime's quantize_dynamic). Biases, scalers and shape
constants are not weights. Weights inside the subgraphs of If, Loop and Scan (and any op with a
graph attribute) are counted too: no tinyq encoding quantises them, so they count as fp32 with
that reason, and the fraction quantised stays honest. Only onnx is needed, so validators can count
without onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Set, Tuple

import onnx
from onnx import TensorProto

# op -> the input slots that hold a weight.
WEIGHT_SLOTS = {"Conv": (1,), "ConvTranspose": (1,), "MatMul": (0, 1), "Gemm": (0, 1), "Gather": (0,),
                "GRU": (1, 2), "LSTM": (1, 2), "RNN": (1, 2)}  # recurrent: W and R
RECURRENT_OPS = ("GRU", "LSTM", "RNN")
_INT8 = {TensorProto.INT8, TensorProto.UINT8}
# Ops whose int8 inputs (or dequantised inputs) are weights.
_READS_WEIGHTS = {*WEIGHT_SLOTS, "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM"}
# Ops that only exist in a model that is already quantised.
QUANTISED_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul", "MatMulNBits",
}


@dataclass(frozen=True)
class LeftFp32:
    """Weights of one op type that an artefact keeps in fp32."""

    op: str
    count: int
    elements: int
    reason: str


@dataclass
class Coverage:
    quantised_elements: int = 0
    fp32_elements: int = 0
    left_fp32: List[LeftFp32] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        total = self.quantised_elements + self.fp32_elements
        return self.quantised_elements / total if total else 0.0

    @property
    def nothing_quantised(self) -> bool:
        return self.quantised_elements == 0

    def as_dict(self) -> Dict[str, object]:
        return {
            "weights_quantised_fraction": round(self.fraction, 6),
            "weight_elements_int8": self.quantised_elements,
            "weight_elements_fp32": self.fp32_elements,
            "ops_left_fp32": [vars(o) for o in self.left_fp32],
        }


def _elements(t: TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= d
    return n


def subgraphs(graph: onnx.GraphProto) -> Iterator[Tuple[onnx.NodeProto, onnx.GraphProto]]:
    """(node, subgraph) for every graph attribute (GRAPH or GRAPHS: If's branches, Loop's and
    Scan's bodies) of the graph's nodes, and theirs, depth first."""
    stack = [iter(graph.node)]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
            continue
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield node, g
                stack.append(iter(g.node))


def graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph, then every subgraph in it (tinyq.model.weights.subgraphs)."""
    yield model.graph
    for _, g in subgraphs(model.graph):
        yield g


def _initialisers(model: onnx.ModelProto) -> Dict[str, TensorProto]:
    """Every initialiser, of the main graph and of every subgraph, by name (ONNX names are unique
    across scopes: a subgraph cannot shadow an outer name)."""
    return {t.name: t for g in graphs(model) for t in g.initializer}


def weight_inputs(nodes: Iterable[onnx.NodeProto]) -> Iterator[Tuple[onnx.NodeProto, str]]:
    """(node, name) for every input a weight slot of a weight-bearing op reads (WEIGHT_SLOTS)."""
    for node in nodes:
        for slot in WEIGHT_SLOTS.get(node.op_type, ()):
            if slot < len(node.input):
                yield node, node.input[slot]


def _float_weights(nodes: Iterable[onnx.NodeProto], inits: Dict[str, TensorProto], seen: Set[str]
                   ) -> Iterator[Tuple[onnx.NodeProto, TensorProto]]:
    """(node, weight) for every float initialiser of rank >= 2 in a weight slot, each weight once."""
    for node, name in weight_inputs(nodes):
        if name in inits and name not in seen:
            t = inits[name]
            if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2:
                seen.add(t.name)
                yield node, t


def int8_weight_elements(model: onnx.ModelProto) -> int:
    """Elements of the int8/uint8 initialisers of rank >= 2 that a weight-bearing or integer op
    reads, directly or through a DequantizeLinear: the quantised weights (QDQ's quantised Add
    constants and zero points are not weights). Subgraphs' nodes count too."""
    inits = _initialisers(model)
    nodes = [n for g in graphs(model) for n in g.node]
    dequantised = {n.output[0]: n.input[0] for n in nodes if n.op_type == "DequantizeLinear" and n.output}
    counted = set()
    for node in nodes:
        if node.op_type not in _READS_WEIGHTS:
            continue
        for name in node.input:
            name = dequantised.get(name, name)
            t = inits.get(name)
            if t is not None and t.data_type in _INT8 and len(t.dims) >= 2:
                counted.add(name)
    return sum(_elements(inits[n]) for n in counted)


def is_quantised(model: onnx.ModelProto) -> bool:
    """True when the graph, or a subgraph in it, already holds quantisation ops (it is not an fp32 source)."""
    return any(n.op_type in QUANTISED_OPS for g in graphs(model) for n in g.node)


def subgraph_reason(container: onnx.NodeProto) -> str:
    """Why a weight inside a subgraph stayed fp32."""
    return f"inside an If/Loop/Scan subgraph ({container.op_type}): not quantised; tinyq quantises the main graph only"


def coverage(artefact: onnx.ModelProto, reason: Callable[[str, int], str]) -> Coverage:
    """The artefact's quantised and fp32 weights; reason(op, elements) says why a weight of the
    main graph stayed fp32. A weight read inside an If/Loop/Scan subgraph and left fp32 counts as
    fp32 with subgraph_reason."""
    cov = Coverage(quantised_elements=int8_weight_elements(artefact))
    inits, seen = _initialisers(artefact), set()
    left: Dict[Tuple[str, str], List[int]] = {}
    main = {t.name: t for t in artefact.graph.initializer}
    for node, t in _float_weights(artefact.graph.node, main, seen):
        n = _elements(t)
        left.setdefault((node.op_type, reason(node.op_type, n)), []).append(n)
    for container, g in subgraphs(artefact.graph):
        for node, t in _float_weights(g.node, inits, seen):
            left.setdefault((node.op_type, subgraph_reason(container)), []).append(_elements(t))
    for (op, why), sizes in sorted(left.items()):
        cov.fp32_elements += sum(sizes)
        cov.left_fp32.append(LeftFp32(op, len(sizes), sum(sizes), why))
    return cov
