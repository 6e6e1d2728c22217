"""What an int8 artefact quantised: its weights counted, and the weight ops it left in fp32, with why.

A weight is a float initialiser of rank >= 2 feeding the weight input of a weight-bearing op
(Conv, ConvTranspose, MatMul, Gemm, and the table of a Gather: embeddings). In an artefact it is quantised when it is stored as int8 or
uint8: behind a DequantizeLinear (weight-only, static QDQ) or fed to an integer kernel
(MatMulInteger, ConvInteger, QLinear*; onnxruntime's quantize_dynamic). Biases, scalers and shape
constants are not weights. Only onnx is needed, so validators can count without onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Tuple

import onnx
from onnx import TensorProto

# op -> the input slots that hold a weight.
WEIGHT_SLOTS = {"Conv": (1,), "ConvTranspose": (1,), "MatMul": (0, 1), "Gemm": (0, 1), "Gather": (0,)}
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


def _float_weights(graph: onnx.GraphProto) -> Iterator[Tuple[onnx.NodeProto, TensorProto]]:
    """(node, weight) for every float initialiser of rank >= 2 in a weight slot, each weight once."""
    inits = {t.name: t for t in graph.initializer}
    seen = set()
    for node in graph.node:
        for slot in WEIGHT_SLOTS.get(node.op_type, ()):
            if slot < len(node.input) and node.input[slot] in inits and node.input[slot] not in seen:
                t = inits[node.input[slot]]
                if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2:
                    seen.add(t.name)
                    yield node, t


def int8_weight_elements(model: onnx.ModelProto) -> int:
    """Elements of the int8/uint8 initialisers of rank >= 2 that a weight-bearing or integer op
    reads, directly or through a DequantizeLinear: the quantised weights (QDQ's quantised Add
    constants and zero points are not weights)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    dequantised = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    counted = set()
    for node in graph.node:
        if node.op_type not in _READS_WEIGHTS:
            continue
        for name in node.input:
            name = dequantised.get(name, name)
            t = inits.get(name)
            if t is not None and t.data_type in _INT8 and len(t.dims) >= 2:
                counted.add(name)
    return sum(_elements(inits[n]) for n in counted)


def is_quantised(model: onnx.ModelProto) -> bool:
    """True when the graph already holds quantisation ops (it is not an fp32 source)."""
    return any(n.op_type in QUANTISED_OPS for n in model.graph.node)


def coverage(artefact: onnx.ModelProto, reason: Callable[[str, int], str]) -> Coverage:
    """The artefact's quantised and fp32 weights; reason(op, elements) says why a weight stayed fp32."""
    cov = Coverage(quantised_elements=int8_weight_elements(artefact))
    left: Dict[Tuple[str, str], List[int]] = {}
    for node, t in _float_weights(artefact.graph):
        n = _elements(t)
        left.setdefault((node.op_type, reason(node.op_type, n)), []).append(n)
    for (op, why), sizes in sorted(left.items()):
        cov.fp32_elements += sum(sizes)
        cov.left_fp32.append(LeftFp32(op, len(sizes), sum(sizes), why))
    return cov
