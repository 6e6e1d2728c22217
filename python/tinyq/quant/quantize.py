"""Producing int8 models: repairs for real exports, onnxruntime's quantisers, tinyq's encodings.

Before quantising, load_for_quantization() repairs the traps found in real exports and refuses,
with a message naming the fix, what cannot be repaired:
  - graph.value_info entries for initialisers, duplicates or stale shapes: dropped, then shapes
    are inferred again ("Inferred shape and existing shape differ" in quantize_dynamic);
  - external data whose `location` no longer names the file beside the model: re-pointed at the
    one data file that is there, then inlined (tiny models need no external data);
  - initialisers shared by several quantisable nodes (a siamese backbone): copied per node, so that
    every int8 kernel owns its weights (onnxruntime's x64quantprecision transformer fails on shared
    ones);
  - fp16 models and opsets outside 13..21, graphs without outputs and NaN or infinite weights:
    refused.

A model that is already quantised is refused too: pass its fp32 source.

Encodings (all data-free, so all serve quant_mode "dynamic"):
  - "dynamic": onnxruntime's quantize_dynamic (int8 weights, activations quantised at run time);
  - "weight_only": int8 weights stored as initialisers feeding standard DequantizeLinear nodes,
    activations stay fp32. onnxruntime's own weight-only path (MatMulNBits) is a contrib op for
    2-D MatMul with K >= its block size, so it cannot serve 6-input MLPs, Conv or OpenVINO; this
    one uses standard ONNX ops only.
  - "auto": weight_only, unless it quantises no weight at all (then dynamic). Never chosen for
    bytes: "dynamic" puts a DynamicQuantizeLinear chain before every quantised op, and on tiny
    models that costs more than its integer kernel saves (measured 1.1-1.4x slower than
    weight_only on MLPs, 3-6x on CNNs; docs/user-guide.md).
Static QDQ (quant_mode "static") is onnxruntime's quantize_static fed from a calibration .npz,
at the batch size the model accepts; uint8 activations, int8 symmetric weights.
compact() then strips what only costs bytes or leaks the exporter's environment: doc strings,
metadata_props everywhere (torch's stack traces with local paths), node names, long tensor names.
It never shares an initialiser between nodes: onnxruntime's x64quantprecision transformer
rewrites int8 kernels' initialisers in place and fails on shared ones.
Every artefact's weights are counted (tinyq.model.weights): the fraction quantised, and each op left
in fp32 with the reason.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tinyq.io import errors
from tinyq.model import calibration, weights
from tinyq.model.calibration import MAX_MODEL_BYTES
from tinyq.quant import overflow

MIN_OPSET, MAX_OPSET = 13, 21
ENCODINGS = ("auto", "weight_only", "dynamic")
_FP16 = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
_PACKED_4BIT = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, n)}
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}
MIN_WEIGHT_ELEMENTS = 16  # smaller weights cost more in scales than int8 saves
DEFAULT_CALIBRATION_BATCH = 32


class QuantizeError(Exception):
    """The model cannot be quantised as given; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class Repair:
    code: str
    detail: str


def model_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports, 0 when none."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every tensor the model stores: the initialisers and tensor attributes (Constant's value) of
    the main graph and of every subgraph."""
    for g in weights.graphs(model):
        yield from g.initializer
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors


def _external_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    for t in _tensors(model):
        if t.data_location == TensorProto.EXTERNAL:
            yield t


def _external_fields(path: Path, tensor: TensorProto) -> Tuple[str, int, Optional[int]]:
    """(location, offset, length or None) of an external tensor; QuantizeError when malformed."""
    fields = {e.key: e.value for e in tensor.external_data}
    location = fields.get("location", "")
    if not location or "\0" in location:
        raise QuantizeError(f"{path}: initialiser {tensor.name!r} is stored as external data but names no usable location "
                            f"({location!r}); export the model again")
    numbers = []
    for key in ("offset", "length"):
        value = fields.get(key)
        try:
            number = None if value is None else int(value)
        except ValueError:
            number = -1
        if number is not None and number < 0:
            raise QuantizeError(f"{path}: initialiser {tensor.name!r}: external data {key} {value!r} is not a byte count; "
                                f"export the model again")
        numbers.append(number)
    return location, numbers[0] or 0, numbers[1]


def _inside_model_dir(path: Path, tensor: TensorProto, location: str) -> None:
    """Refuses a location that is absolute, climbs out with '..', or resolves (through a symlink)
    outside the model's directory: tinyq reads external data only from beside the model."""
    where = Path(location)
    escapes = where.is_absolute() or where.drive or ".." in where.parts or "\\" in location
    if not escapes:
        base = path.parent.resolve()
        escapes = not (base / where).resolve().is_relative_to(base)
    if escapes:
        raise QuantizeError(
            f"{path}: initialiser {tensor.name!r} names external data {location!r}, outside the model's directory "
            f"{path.parent}; tinyq reads external data only from files beside the model: put the data file there and "
            f"set its location to the bare file name, or re-export with the weights inside the model")


def _data_file(path: Path, tensor: TensorProto, location: str) -> str:
    """The data file actually beside the model for an external tensor recorded at location.

    A stale location (the model was renamed after export) resolves to the one data file named
    after the model, <model>.onnx.data or <model>.data, and to no other file (one that merely
    shares a prefix with the model's name belongs to another model); anything else is an error
    naming the fix.
    """
    _inside_model_dir(path, tensor, location)
    if (path.parent / location).exists():
        return location
    names = dict.fromkeys((f"{path.name}.data", f"{path.stem}.data"))
    candidates = [n for n in names if (path.parent / n).is_file() and n != location]
    if len(candidates) != 1:
        found = ", ".join(candidates) or f"none of {', '.join(names)}"
        raise QuantizeError(
            f"{path}: initialiser {tensor.name!r} names external data {location!r}, which is missing: it is not beside the "
            f"model (data files named after the model: {found}); put the data file beside the model or fix its location"
        )
    return candidates[0]


def _tensor_bytes(path: Path, tensor: TensorProto) -> int:
    """How many bytes the tensor's data takes: its elements times its element size."""
    elements = math.prod(tensor.dims)
    if tensor.data_type in _PACKED_4BIT:
        return (elements + 1) // 2
    try:
        itemsize = 0 if tensor.data_type == TensorProto.STRING else helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # an undefined or unknown data type
        itemsize = 0
    if itemsize == 0:
        raise QuantizeError(f"{path}: initialiser {tensor.name!r} is external data of data type {tensor.data_type}, which "
                            f"ONNX cannot store externally; export the model again")
    return elements * itemsize


def _read_external(path: Path, tensor: TensorProto, file: str, offset: int, length: Optional[int], budget: List[int]) -> bytes:
    """The tensor's bytes from the data file, checked: a regular file, holding offset + length
    bytes, length matching the tensor's shape; budget[0] is what the model may still read."""
    need = _tensor_bytes(path, tensor)
    if length is not None and length != need:
        raise QuantizeError(f"{path}: initialiser {tensor.name!r} records {length:,} bytes of external data, but its shape "
                            f"{list(tensor.dims)} needs {need:,}; the model and its data file disagree: export them again")
    if need > budget[0]:
        raise errors.TooLarge(f"{path}: initialiser {tensor.name!r} needs {need:,} bytes of external data, over the "
                              f"{MAX_MODEL_BYTES:,} bytes (2 GiB) an ONNX model can hold in all; tinyq quantises tiny models")
    data_path = path.parent / file
    try:
        with calibration.open_regular(data_path) as f:
            size = os.fstat(f.fileno()).st_size
            if offset + need > size:
                raise QuantizeError(
                    f"{path}: initialiser {tensor.name!r} reads bytes {offset:,}-{offset + need:,} of its external data "
                    f"{file}, which holds only {size:,} bytes: the data file is truncated or belongs to another export; "
                    f"restore it or export the model again")
            f.seek(offset)
            data = f.read(need)
    except calibration.UnreadableFile as e:
        raise QuantizeError(f"{path}: external data {data_path} of initialiser {tensor.name!r} {e}") from None
    if len(data) != need:  # it shrank while being read
        raise QuantizeError(f"{path}: external data {file} of initialiser {tensor.name!r} is truncated; restore it")
    budget[0] -= need
    return data


def _repair_external_data(path: Path, model: onnx.ModelProto, repairs: List[Repair]) -> None:
    """Inlines every external tensor (main graph and subgraphs), read and checked by tinyq, never
    by onnx's loader: a location outside the model's directory, a missing or truncated data file,
    or a FIFO in its place is refused naming the fix."""
    tensors = list(_external_tensors(model))
    if not tensors:
        return
    budget = [MAX_MODEL_BYTES]
    for t in tensors:
        location, offset, length = _external_fields(path, t)
        actual = _data_file(path, t, location)
        t.raw_data = _read_external(path, t, actual, offset, length, budget)
        if actual != location:
            repairs.append(Repair("external_data_location", f"{t.name}: {location} -> {actual}"))
    for t in tensors:
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]
    repairs.append(Repair("external_data_inlined", f"{len(tensors)} tensors inlined"))


def _repair_value_info(model: onnx.ModelProto, repairs: List[Repair]) -> None:
    if not model.graph.value_info:
        return
    inits = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.value_info]
    n_init = sum(1 for n in names if n in inits)
    n_dup = len(names) - len(set(names))
    del model.graph.value_info[:]
    repairs.append(
        Repair("value_info_dropped", f"{len(names)} entries ({n_init} naming initialisers, {n_dup} duplicates); shapes re-inferred")
    )


def _refuse_unusable(path: Path, model: onnx.ModelProto) -> None:
    """A graph with no outputs, or with NaN or infinite float weights (in the main graph or in an
    If/Loop/Scan subgraph), would quantise into a useless artefact that still writes (exit 0):
    refused, naming the fix."""
    if not model.graph.output:
        raise QuantizeError(f"{path}: the graph has no outputs, so there is nothing to compute or judge; re-export it "
                            f"with its outputs")
    for g in weights.graphs(model):
        where = "" if g is model.graph else f" (in subgraph {g.name!r})"
        for t in g.initializer:
            if t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
                w = numpy_helper.to_array(t)
                bad = int(w.size - np.count_nonzero(np.isfinite(w)))
                if bad:
                    raise QuantizeError(f"{path}: initialiser {t.name!r}{where} holds {bad} NaN or infinite values of {w.size}; "
                                        f"int8 cannot represent them: fix the weights (a diverged training run?) and re-export")


def _unshare_initialisers(model: onnx.ModelProto, repairs: List[Repair]) -> None:
    """Gives every quantisable node its own copy of an initialiser it shares with other nodes (a
    siamese model's backbone read by two inputs). Quantised, a shared weight becomes one int8
    tensor feeding several int8 kernels, and onnxruntime's x64quantprecision transformer, which
    rewrites each kernel's initialisers in place, then fails ("Attempt to replace the existing tensor")."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: Dict[str, List[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            if name in inits:
                readers.setdefault(name, []).append(node)
    copied = 0
    for name, nodes in readers.items():
        if len(nodes) < 2 or not any(n.op_type in STATIC_OP_TYPES for n in nodes):
            continue
        for k, node in enumerate(nodes[1:], start=1):
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = f"{name}__copy{k}"
            graph.initializer.append(copy)
            node.input[:] = [copy.name if i == name else i for i in node.input]
            copied += 1
    if copied:
        shared = sum(1 for nodes in readers.values() if len(nodes) > 1)
        repairs.append(Repair("shared_initialisers_unshared", f"{shared} initialisers read by several nodes: {copied} copies"))


def load_model(path: Path) -> Tuple[onnx.ModelProto, List[Repair]]:
    """The ONNX model at path with its external data inlined (read and checked by tinyq: beside the
    model, regular files, not truncated; a stale location re-pointed at the data file named after
    the model). QuantizeError naming the file when it cannot be read; errors.TooLarge over
    calibration.MAX_MODEL_BYTES."""
    path = Path(path)
    try:
        model = calibration.read_model(path)
    except calibration.ModelFileError as e:
        raise QuantizeError(str(e)) from None
    repairs: List[Repair] = []
    _repair_external_data(path, model, repairs)
    return model, repairs


def load_for_quantization(path: Path) -> Tuple[onnx.ModelProto, List[Repair]]:
    """The fp32 model at path, repaired and shape-inferred; raises QuantizeError when it cannot be."""
    path = Path(path)
    model, repairs = load_model(path)

    opset = model_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise QuantizeError(
            f"{path}: opset {opset} is not supported (tinyq quantises opsets {MIN_OPSET}-{MAX_OPSET}); "
            f"re-export with opset_version=17"
        )
    quantised = sorted({n.op_type for g in weights.graphs(model) for n in g.node if n.op_type in weights.QUANTISED_OPS})
    if quantised:
        raise QuantizeError(
            f"{path}: already quantised (it has {', '.join(quantised)} nodes); pass the fp32 model it was made from"
        )
    half = [t.name for g in weights.graphs(model) for t in g.initializer if t.data_type in _FP16]
    half += [v.name for v in (*model.graph.input, *model.graph.output) if v.type.tensor_type.elem_type in _FP16]
    if half:
        raise QuantizeError(
            f"{path}: fp16 model ({len(half)} fp16 tensors, e.g. {half[0]!r}); int8 quantisation starts from fp32: "
            f"re-export the model in float32 (model.float()) and quantise that"
        )
    _refuse_unusable(path, model)
    _repair_value_info(model, repairs)
    _unshare_initialisers(model, repairs)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except Exception as e:
        raise QuantizeError(f"{path}: the graph fails ONNX shape inference or checks after repair: {e}") from None
    return model, repairs


# --- encodings -----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_onnxruntime():
    """onnxruntime's quantisers log advice and per-tensor notes on the root logger; tinyq reports
    what matters itself."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def quantize_dynamic(model: onnx.ModelProto, per_channel: bool) -> onnx.ModelProto:
    """onnxruntime's quantize_dynamic, int8 weights."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="tinyq_ptq_") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        try:
            with _quiet_onnxruntime():
                ort_quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
        except Exception as e:  # onnxruntime raises ValueError, RuntimeError, KeyError, ... on graphs it cannot handle
            raise QuantizeError(
                f"onnxruntime's quantize_dynamic failed on this graph ({type(e).__name__}: {e}); try --encoding=weight_only"
            ) from None
        return onnx.load(str(dst))


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Puts the graph's nodes in topological order, in place, counting the outer names an If/Loop/Scan
    body reads as its node's inputs. onnxruntime's quantize_dynamic and quantize_static move such a
    node ahead of what its body reads (onnxruntime sorts on load; onnx's checker refuses). A cycle
    leaves the order as is."""
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    deps = []
    for i, node in enumerate(nodes):
        reads = set(node.input)
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                reads.update(name for sub in (g, *(sg for _, sg in weights.subgraphs(g))) for n in sub.node for name in n.input)
        deps.append({producer[r] for r in reads if r in producer and producer[r] != i})
    waiting = [len(d) for d in deps]
    users: Dict[int, List[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:  # Kahn's, lowest index first: a sorted graph keeps its order
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):
        return
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def _weight_axis(node: onnx.NodeProto, ndim: int) -> int:
    """The output-channel axis of a node's weight, for per-channel scales."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1  # [C_in, C_out / group, k...]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1  # MatMul: [..., K, N]


def weight_only(model: onnx.ModelProto, per_channel: bool = True, min_elements: int = MIN_WEIGHT_ELEMENTS) -> onnx.ModelProto:
    """Symmetric int8 weights behind standard DequantizeLinear nodes; activations stay fp32."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    done: Dict[str, str] = {}
    new_nodes: List[onnx.NodeProto] = []
    for node in graph.node:
        idx = _WEIGHT_INPUT.get(node.op_type)
        if idx is not None and len(node.input) > idx and node.input[idx] in inits and node.input[idx] not in done:
            t = inits[node.input[idx]]
            w = numpy_helper.to_array(t)
            if t.data_type == TensorProto.FLOAT and w.ndim >= 2 and w.size >= min_elements:
                axis = _weight_axis(node, w.ndim)
                reduce = tuple(a for a in range(w.ndim) if a != axis) if per_channel else None
                scale = np.abs(w).max(axis=reduce) / 127.0 if per_channel else np.array(np.abs(w).max() / 127.0)
                scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
                shape = [1] * w.ndim
                if per_channel:
                    shape[axis] = -1
                q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
                qname, sname = f"{t.name}_q", f"{t.name}_scale"
                graph.initializer.remove(t)
                graph.initializer.extend([numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname)])
                attrs = {"axis": axis} if per_channel else {}
                new_nodes.append(helper.make_node("DequantizeLinear", [qname, sname], [t.name], **attrs))
                done[t.name] = qname
    # DequantizeLinear nodes first keeps the graph topologically sorted.
    nodes = new_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _strip_graph(graph: onnx.GraphProto) -> None:
    """Doc strings and metadata_props off the graph, its nodes, tensors and values; subgraphs too.

    Fields compaction has always emptied (model, graph, node, graph input and output doc strings)
    are set to "", the rest cleared, so the zoo's pinned artefacts keep their bytes."""
    graph.doc_string = ""
    graph.ClearField("metadata_props")
    for v in (*graph.input, *graph.output):
        v.doc_string = ""
        v.ClearField("metadata_props")
    for v in graph.value_info:
        v.ClearField("doc_string")
        v.ClearField("metadata_props")
    for t in graph.initializer:
        t.ClearField("doc_string")
        t.ClearField("metadata_props")
    for node in graph.node:
        node.doc_string = ""
        node.ClearField("metadata_props")
        for a in node.attribute:
            a.ClearField("doc_string")
            for g in (a.g,) if a.HasField("g") else a.graphs:
                _strip_graph(g)


def strip_metadata(model: onnx.ModelProto) -> None:
    """Removes, in place, everything that describes the exporter's run rather than the computation:
    doc strings, metadata_props (torch's dynamo exporter writes stack traces with local source paths
    and line numbers into node metadata_props), producer_version."""
    model.doc_string = ""
    model.producer_version = ""
    model.ClearField("metadata_props")
    _strip_graph(model.graph)
    for f in model.functions:
        f.ClearField("doc_string")
        f.ClearField("metadata_props")
        for node in f.node:
            node.ClearField("doc_string")
            node.ClearField("metadata_props")


def _names(graph: onnx.GraphProto) -> Iterator[str]:
    """Every value name one graph (not its subgraphs) declares or reads."""
    for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        yield v.name
    for node in graph.node:
        yield from node.input
        yield from node.output


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same computation in fewer bytes, and nothing of the exporter's environment: no doc
    strings, metadata or node names, short tensor names.

    Initialisers are never shared between nodes, not even identical scales and zero points:
    onnxruntime's x64quantprecision transformer rewrites an int8 kernel's initialisers in place and
    fails on shared ones ("Attempt to replace the existing tensor").
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    strip_metadata(model)
    graph = model.graph
    del graph.value_info[:]
    _sort_nodes(graph)

    # Short names for everything that is not a graph input or output, nor named inside a subgraph
    # (an If/Loop/Scan body reads outer names by name, and its own names must stay unique).
    io_names = {v.name for v in (*graph.input, *graph.output)}
    io_names |= {name for _, g in weights.subgraphs(graph) for name in _names(g)}
    rename: Dict[str, str] = {}
    # Hex names in order, skipping any a graph input or output already has ("a", "1f", ...).
    fresh = (format(k, "x") for k in itertools.count() if format(k, "x") not in io_names)

    def short(name: str) -> str:
        if not name or name in io_names:
            return name
        if name not in rename:
            rename[name] = next(fresh)
        return rename[name]

    for t in graph.initializer:
        t.name = short(t.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    onnx.checker.check_model(model)
    return model


# --- what each artefact quantised -------------------------------------------------------------

_ORT_DYNAMIC_GAPS = {
    "ConvTranspose": "onnxruntime's quantize_dynamic has no integer ConvTranspose; --encoding=weight_only quantises it",
}


def _reason(encoding: str, op: str, elements: int) -> str:
    if encoding == "weight_only":
        if elements < MIN_WEIGHT_ELEMENTS:
            return f"{elements} elements, fewer than the {MIN_WEIGHT_ELEMENTS} worth a scale"
        if op == "Gather":
            return "weight_only leaves embedding tables in fp32; --encoding=dynamic quantises them"
        return f"weight_only quantises the weight input of {', '.join(_WEIGHT_INPUT)} only"
    if encoding == "dynamic":
        return _ORT_DYNAMIC_GAPS.get(op, f"onnxruntime's quantize_dynamic left this {op} in fp32")
    if op not in STATIC_OP_TYPES:
        return f"onnxruntime's CPU provider has no int8 {op} kernel (quantised, it would run as DequantizeLinear -> fp32 {op})"
    return f"onnxruntime's quantize_static (QDQ) left this {op} in fp32"


def coverage_of(artefact: Union[bytes, onnx.ModelProto], encoding: str) -> weights.Coverage:
    """The weights the artefact quantised, and each op it left in fp32 with the reason."""
    model = onnx.load_from_string(artefact) if isinstance(artefact, bytes) else artefact
    return weights.coverage(model, lambda op, n: _reason(encoding, op, n))


@dataclass
class Encoded:
    encoding: str
    model_bytes: bytes
    coverage: weights.Coverage
    why: str = ""

    @property
    def size(self) -> int:
        return len(self.model_bytes)


AUTO_WHY = (
    "auto: weight_only adds no run-time activation quantisation, so it runs on fp32 kernels; dynamic's "
    "DynamicQuantizeLinear chains were measured slower than weight_only on every tiny model tried, so auto "
    "never picks dynamic to save bytes, only when weight_only quantises nothing"
)


def encode(model: onnx.ModelProto, encoding: str, per_channel: bool, overflow_fix: str = "needed") -> Encoded:
    """One int8 encoding, compacted, with its weight coverage. See the module doc for "auto";
    overflow_fix as in quantize_static_qdq (weight_only runs no integer kernel)."""
    if encoding == "auto":
        chosen = encode(model, "weight_only", per_channel, overflow_fix)
        if chosen.coverage.nothing_quantised:
            chosen = encode(model, "dynamic", per_channel, overflow_fix)
        chosen.why = AUTO_WHY
        return chosen
    if encoding == "weight_only":
        out = weight_only(model, per_channel=per_channel)
    elif encoding == "dynamic":
        out = quantize_dynamic(model, per_channel=per_channel)
        overflow.fix_overflow(out, overflow_fix, model)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; one of {ENCODINGS}")
    out = compact(out)
    return Encoded(encoding, out.SerializeToString(), coverage_of(out, encoding))


def calibration_batch(model: onnx.ModelProto, samples: Optional[int] = None) -> int:
    """The batch size to calibrate at: the one the model fixes on axis 0; else DEFAULT_CALIBRATION_BATCH,
    or, when that does not divide the sample count, the largest batch below it that does.
    onnxruntime's histogram calibration (Entropy, Percentile) stacks every batch's outputs and fails
    on a ragged last batch ("inhomogeneous shape"); equal batches give every method any sample count."""
    from tinyq.model.calibration import graph_inputs

    fixed = {i.shape[0] for i in graph_inputs(model) if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
    if fixed:
        return min(fixed)
    batch = DEFAULT_CALIBRATION_BATCH if samples is None else min(DEFAULT_CALIBRATION_BATCH, samples)
    while samples and samples % batch:
        batch -= 1
    return batch


def calibration_reader(arrays: Dict[str, np.ndarray], batch: int):
    """An onnxruntime CalibrationDataReader over the arrays (one per input), `batch` samples a read."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(arrays.values())))
            self._batches = iter([{k: v[i : i + batch] for k, v in arrays.items()} for i in range(0, n, batch)])

        def get_next(self):
            return next(self._batches, None)

    return Reader()


# Ops given quantisers by static QDQ: those with int8 kernels in onnxruntime's CPU provider
# (QLinearConv, QGemm, QLinearMatMul, QLinearAdd/Mul, QLinearAveragePool, QLinearGlobalAveragePool,
# QLinearConcat, int8 MaxPool), plus Relu and Clip, which fuse into the int8 kernel before them.
STATIC_OP_TYPES = ("Conv", "Gemm", "MatMul", "Add", "Mul", "AveragePool", "MaxPool", "GlobalAveragePool", "Concat",
                   "Relu", "Clip")


def quantize_static_qdq(
    model: onnx.ModelProto,
    calibration: Dict[str, np.ndarray],
    *,
    method: str = "minmax",
    per_channel: bool = False,
    exclude_nodes: Sequence[str] = (),
    calibration_cache: Optional[Path] = None,
    batch: Optional[int] = None,
    rewrites: Sequence[str] = (),
    overflow_fix: str = "needed",
) -> bytes:
    """onnxruntime's quantize_static in QDQ format (uint8 activations, int8 symmetric weights) on
    STATIC_OP_TYPES, calibrated on the arrays (one per input) fed `batch` samples at a time, by
    default the batch the model accepts that divides the sample count (calibration_batch);
    exclude_nodes stay fp32.

    calibration_cache: onnxruntime's own cache of the ranges (written on the first call, read on
    the next), so that candidates differing only in granularity or fp32 nodes share one
    calibration; the ranges and so the bytes are the same as without it.
    rewrites: tinyq.quant.rewrites to apply to the QDQ graph before compaction (outputs unchanged).
    overflow_fix: which layers get 7-bit weights so that no x86 kernel can saturate (tinyq.quant.overflow):
    "needed" (those whose pair bound can be crossed), "all" or "none".
    """
    from tinyq.quant import rewrites as graph_rewrites
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    batch = batch or calibration_batch(model, len(next(iter(calibration.values()))))

    with tempfile.TemporaryDirectory(prefix="tinyq_ptq_") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        try:
            with _quiet_onnxruntime():
                quantize_static(
                    str(src),
                    str(dst),
                    calibration_reader(calibration, batch),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(STATIC_OP_TYPES),
                    nodes_to_exclude=list(exclude_nodes),
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[method],
                    extra_options={"CalibTensorRangeSymmetric": False, "ActivationSymmetric": False, "WeightSymmetric": True},
                    calibration_cache_path=calibration_cache,
                )
        except Exception as e:  # onnxruntime raises many types on graphs it cannot calibrate or quantise
            raise QuantizeError(f"onnxruntime's quantize_static failed on this graph ({type(e).__name__}: {e})") from None
        qdq = onnx.load(str(dst))
        graph_rewrites.apply(qdq, rewrites)
        overflow.fix_overflow(qdq, overflow_fix, model)
        return compact(qdq).SerializeToString()


# --- what both PTQ tools share ---------------------------------------------------------------

EXIT_LARGER = 3  # the int8 artefact was written but is not smaller than its fp32 source
EXIT_NOTHING_QUANTISED = 4  # refused: the artefact would quantise no weight; nothing written


def default_output(fp32: Path) -> Path:
    """<basename>.int8.onnx beside the fp32 model."""
    name = fp32.name[: -len(".onnx")] if fp32.name.endswith(".onnx") else fp32.name
    return fp32.with_name(name + ".int8.onnx")


def model_bytes_on_disk(path: Path) -> int:
    """A model's size: the .onnx file plus every external data file it references."""
    path = Path(path)
    model = calibration.read_model(path)
    files = {_data_file(path, t, _external_fields(path, t)[0]) for t in _external_tensors(model)}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


def size_fields(fp32: Path, int8_bytes: int) -> Dict[str, object]:
    fp32_bytes = model_bytes_on_disk(fp32)
    return {
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "size_ratio": round(fp32_bytes / int8_bytes, 4),
        "larger_than_fp32": int8_bytes >= fp32_bytes,
    }
