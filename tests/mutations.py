"""Test-only helpers for //tests:gate_mutation_test: break int8 ONNX models in known ways (the
small fp32 models it builds beside the zoo are in mutation_models.py).

Every mutation takes a ModelProto, returns a mutated copy, and is deterministic (seeded). Nothing
here computes a drop: the test's oracle does that, and the gate is what is being tested.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT_TYPES = (TensorProto.INT8, TensorProto.UINT8)


# --- reading the graph ------------------------------------------------------------------------


def inits(model: onnx.ModelProto) -> Dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(inits(model)[name])


def set_array(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replaces an initialiser's contents, keeping its name and element type."""
    old = inits(model)[name]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(old.data_type)
    old.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(dtype), name))


def consumers(model: onnx.ModelProto, tensor: str) -> List[onnx.NodeProto]:
    return [n for n in model.graph.node if tensor in n.input]


def producer(model: onnx.ModelProto, tensor: str) -> Optional[onnx.NodeProto]:
    return next((n for n in model.graph.node if tensor in n.output), None)


@dataclass
class Weight:
    """A quantised weight: its int8/uint8 initialiser, zero point, the node computing with it,
    and the axis of its output channels there."""

    name: str
    zero_point: int
    node: onnx.NodeProto
    out_axis: int
    bias: Optional[str]  # the initialiser holding the bias (int32 feeding a DequantizeLinear, or float)


def _out_axis(node: onnx.NodeProto, ndim: int) -> int:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type in ("MatMul", "MatMulInteger"):
        return ndim - 1
    return 0  # Conv, ConvInteger: [out, in, kh, kw]


def _through_dq(model: onnx.ModelProto, tensor: str) -> Optional[str]:
    """The initialiser behind a tensor, looking through one DequantizeLinear."""
    table = inits(model)
    if tensor in table:
        return tensor
    p = producer(model, tensor)
    if p is not None and p.op_type == "DequantizeLinear" and p.input[0] in table:
        return p.input[0]
    return None


def weights(model: onnx.ModelProto) -> List[Weight]:
    """Every quantised weight (int8 or uint8 initialiser of rank >= 2), in the order the graph
    computes with them (so [-1] is the last layer)."""
    table = inits(model)
    found: List[Weight] = []
    seen = set()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            continue
        for pos, tensor in enumerate(node.input):
            name = _through_dq(model, tensor)
            if name is None or name in seen or table[name].data_type not in INT_TYPES or len(table[name].dims) < 2:
                continue
            seen.add(name)
            zp = 0
            dq = producer(model, tensor)
            if dq is not None and dq.op_type == "DequantizeLinear" and len(dq.input) > 2 and dq.input[2] in table:
                zp = int(array(model, dq.input[2]).ravel()[0])
            if node.op_type == "MatMulInteger" and len(node.input) > 3 and node.input[3] in table:
                zp = int(array(model, node.input[3]).ravel()[0])
            bias = None
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 2:
                bias = _through_dq(model, node.input[2])
            found.append(Weight(name, zp, node, _out_axis(node, len(table[name].dims)), bias))
    return found


@dataclass
class ActQ:
    """An activation's QuantizeLinear: the scale and zero-point initialisers it shares with the
    DequantizeLinear after it."""

    scale: str
    zero_point: str
    node: onnx.NodeProto


def activation_qparams(model: onnx.ModelProto) -> List[ActQ]:
    table = inits(model)
    return [ActQ(n.input[1], n.input[2], n) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in table and n.input[1] in table
            and len(n.input) > 2 and n.input[2] in table]


def _int_range(model: onnx.ModelProto, name: str) -> Tuple[int, int]:
    info = np.iinfo(onnx.helper.tensor_dtype_to_np_dtype(inits(model)[name].data_type))
    return int(info.min), int(info.max)


# --- mutations --------------------------------------------------------------------------------

Mutation = Callable[[onnx.ModelProto], onnx.ModelProto]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return copy.deepcopy(model)


Which = Union[int, str, None]  # a weight by position in compute order, by its float name's stem, or None: the middle one


def _pick(model: onnx.ModelProto, which: Which) -> Weight:
    ws = weights(model)
    assert ws, "the model has no quantised weight"
    if which is None:
        return ws[len(ws) // 2]
    if isinstance(which, str):
        named = [w for w in ws if w.name in (which, which + "_quantized")]
        assert named, f"no quantised weight {which!r} among {[w.name for w in ws]}"
        return named[0]
    return ws[which]


def clean() -> Mutation:
    """Unmodified, re-serialised."""
    return lambda m: onnx.load_from_string(m.SerializeToString())


def scale_weight(factor: float, which: Which = None) -> Mutation:
    """One weight tensor's integers multiplied around its zero point, rounded and clipped."""
    def f(m):
        m = _copy(m)
        w = _pick(m, which)
        lo, hi = _int_range(m, w.name)
        q = array(m, w.name).astype(np.int64)
        set_array(m, w.name, np.clip(np.round(w.zero_point + (q - w.zero_point) * factor), lo, hi))
        return m
    return f


def zero_weight(which: Which = None, with_bias: bool = False) -> Mutation:
    """One weight tensor set to its zero point (and its bias to 0 where asked)."""
    def f(m):
        m = _copy(m)
        w = _pick(m, which)
        set_array(m, w.name, np.full_like(array(m, w.name), w.zero_point))
        if with_bias:
            assert w.bias is not None, f"{w.node.name or w.node.op_type} has no bias initialiser"
            set_array(m, w.bias, np.zeros_like(array(m, w.bias)))
        return m
    return f


def zero_channel(which: Which = None, channel: Optional[int] = None) -> Mutation:
    """One output channel of one weight set to the zero point: `channel`, or the largest one."""
    def f(m):
        m = _copy(m)
        w = _pick(m, which)
        q = array(m, w.name).copy()
        if channel is None:
            norms = np.abs(np.moveaxis(q, w.out_axis, 0).astype(np.int64) - w.zero_point).reshape(q.shape[w.out_axis], -1).sum(1)
            c = int(np.argmax(norms))
        else:
            c = channel % q.shape[w.out_axis]
        idx = [slice(None)] * q.ndim
        idx[w.out_axis] = c
        q[tuple(idx)] = w.zero_point
        set_array(m, w.name, q)
        return m
    return f


def negate_weight(which: Which = None) -> Mutation:
    def f(m):
        m = _copy(m)
        w = _pick(m, which)
        lo, hi = _int_range(m, w.name)
        q = array(m, w.name).astype(np.int64)
        set_array(m, w.name, np.clip(2 * w.zero_point - q, lo, hi))
        return m
    return f


def swap_channels(which: Which = None) -> Mutation:
    """The two output channels of one weight whose integers differ most, swapped (biases stay)."""
    def f(m):
        m = _copy(m)
        w = _pick(m, which)
        q = np.moveaxis(array(m, w.name).copy(), w.out_axis, 0)
        if len(q) < 2:
            raise ValueError(f"{w.name} has one output channel: nothing to swap")
        flat = q.reshape(len(q), -1).astype(np.int64)
        dist = np.abs(flat[:, None, :] - flat[None, :, :]).sum(-1)
        a, b = np.unravel_index(np.argmax(dist), dist.shape)
        q[[a, b]] = q[[b, a]]
        set_array(m, w.name, np.moveaxis(q, 0, w.out_axis))
        return m
    return f


def bit_flips(n_bytes: int, seed: int) -> Mutation:
    """One random bit flipped in each of n_bytes random bytes across all quantised weights."""
    def f(m):
        m = _copy(m)
        ws = weights(m)
        arrays = {w.name: array(m, w.name).copy() for w in ws}
        sizes = np.array([arrays[w.name].size for w in ws])
        rng = np.random.default_rng(seed)
        for flat in rng.choice(sizes.sum(), n_bytes, replace=False):
            k = int(np.searchsorted(np.cumsum(sizes), flat, side="right"))
            start = int(np.cumsum(sizes)[k - 1]) if k else 0
            raw = arrays[ws[k].name].reshape(-1).view(np.uint8)
            raw[flat - start] ^= np.uint8(1 << int(rng.integers(8)))
        for name, q in arrays.items():
            set_array(m, name, q)
        return m
    return f


def scale_bias(factor: float, which: Optional[int] = None) -> Mutation:
    """One layer's bias times factor (int32 initialisers rounded and clipped; float ones scaled)."""
    def f(m):
        m = _copy(m)
        ws = [w for w in weights(m) if w.bias is not None]
        assert ws, "no layer with a bias initialiser"
        w = ws[len(ws) // 2 if which is None else which]
        b = array(m, w.bias)
        if b.dtype.kind == "i":
            info = np.iinfo(b.dtype)
            set_array(m, w.bias, np.clip(np.round(b.astype(np.float64) * factor), info.min, info.max))
        else:
            set_array(m, w.bias, b * factor)
        return m
    return f


def _pick_act(model: onnx.ModelProto, which: Which) -> ActQ:
    """An activation by position in graph order, by the name of the tensor quantised, or None: the middle one."""
    acts = activation_qparams(model)
    if which is None:
        return acts[len(acts) // 2]
    if isinstance(which, str):
        named = [a for a in acts if which in (a.node.input[0], a.node.input[0].replace("_QuantizeLinear_Input", ""))]
        assert named, f"no quantised activation {which!r} among {[a.node.input[0] for a in acts]}"
        return named[0]
    return acts[which]


def scale_activation(factor: float, which: Which = None) -> Mutation:
    """One activation's quantisation scale (shared by its QuantizeLinear and DequantizeLinear)
    times factor: a smaller scale saturates, a larger one coarsens."""
    def f(m):
        m = _copy(m)
        a = _pick_act(m, which)
        set_array(m, a.scale, array(m, a.scale) * factor)
        return m
    return f


def shift_zero_point(shift: int, which: Which = None, dq_only: bool = False) -> Mutation:
    """One activation's zero point moved by `shift` (clipped): in both its QuantizeLinear and
    DequantizeLinear (the representable range moves), or in the DequantizeLinear only (every
    value is offset by -shift * scale)."""
    def f(m):
        m = _copy(m)
        a = _pick_act(m, which)
        lo, hi = _int_range(m, a.zero_point)
        z = np.clip(array(m, a.zero_point).astype(np.int64) + shift, lo, hi)
        if not dq_only:
            set_array(m, a.zero_point, z)
            return m
        new = a.zero_point + "_mutated"
        m.graph.initializer.append(numpy_helper.from_array(z.astype(array(m, a.zero_point).dtype), new))
        for dq in consumers(m, a.node.output[0]):
            if dq.op_type == "DequantizeLinear":
                dq.input[2] = new
        return m
    return f


def constant_output(output: str, value: float = 0.0) -> Mutation:
    """A float output forced to a constant: output = producer * 0 + value."""
    def f(m):
        m = _copy(m)
        node = producer(m, output)
        pre = output + "_before_mutation"
        node.output[list(node.output).index(output)] = pre
        m.graph.initializer.extend([numpy_helper.from_array(np.zeros((), np.float32), "mutation_zero"),
                                    numpy_helper.from_array(np.full((), value, np.float32), "mutation_value")])
        m.graph.node.extend([helper.make_node("Mul", [pre, "mutation_zero"], [output + "_zeroed"]),
                             helper.make_node("Add", [output + "_zeroed", "mutation_value"], [output])])
        return m
    return f


def nan_on_output_path(output: str) -> Mutation:
    """The first float initialiser found walking back from `output` (a DequantizeLinear's scale, a
    bias, an output mean) set to NaN."""
    def f(m):
        m = _copy(m)
        table = inits(m)
        frontier = [output]
        while frontier:
            node = producer(m, frontier.pop(0))
            if node is None:
                continue
            for t in node.input:
                if t in table and table[t].data_type == TensorProto.FLOAT:
                    set_array(m, t, np.full_like(array(m, t), np.nan))
                    return m
            frontier.extend(node.input)
        raise ValueError(f"no float initialiser on the path to {output}")
    return f
