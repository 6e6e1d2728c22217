"""Reading an ONNX model, and the repairs and refusals real exports need (tinyq.quant.quantize's
load_for_quantization applies them before it quantises):
  - external data whose `location` no longer names the file beside the model: re-pointed at the
    one data file that is there, then inlined (tiny models need no external data); read and
    checked by tinyq: beside the model, regular files, not truncated;
  - graph.value_info entries for initialisers, duplicates or stale shapes: dropped, then shapes
    are inferred again ("Inferred shape and existing shape differ" in quantize_dynamic);
  - graphs without outputs, and NaN or infinite weights: refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tinyq.io import errors
from tinyq.model import calibration, weights
from tinyq.model.calibration import MAX_MODEL_BYTES

_PACKED_4BIT = {getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, n)}


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


def repair_value_info(model: onnx.ModelProto, repairs: List[Repair]) -> None:
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


def _nonfinite(t: TensorProto) -> int:
    """How many NaN or infinite values a float tensor holds (0 for other types)."""
    if t.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        return 0
    w = numpy_helper.to_array(t)
    return int(w.size - np.count_nonzero(np.isfinite(w)))


def _weights_read(graph: onnx.GraphProto) -> set:
    """The names a weight slot of a weight-bearing op reads (tinyq.model.weights.WEIGHT_SLOTS)."""
    return {name for _, name in weights.weight_inputs(graph.node)}


def _constant_value(node: onnx.NodeProto) -> Optional[TensorProto]:
    """The tensor a Constant node holds in its `value` attribute, else None."""
    return next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)


def nonfinite_constants(graph: onnx.GraphProto) -> set:
    """The float initialisers and Constant outputs of graph that hold NaN or infinite values: masks
    and fill values (a -inf fed to Max), which no quantiser may touch."""
    names = {t.name for t in graph.initializer if _nonfinite(t)}
    for node in graph.node:
        if node.op_type == "Constant":
            value = _constant_value(node)
            if value is not None and _nonfinite(value):
                names.add(node.output[0])
    return names


def refuse_unusable(path: Path, model: onnx.ModelProto) -> None:
    """A graph with no outputs, or a weight (the weight slot of a Conv, MatMul, Gemm or Gather, in
    the main graph or an If/Loop/Scan subgraph) holding NaN or infinite values, would quantise into a
    useless artefact that still writes (exit 0): refused, naming the fix. Other constants (a -inf
    mask, a fill value) are not weights: kept as they are."""
    if not model.graph.output:
        raise QuantizeError(f"{path}: the graph has no outputs, so there is nothing to compute or judge; re-export it "
                            f"with its outputs")
    for g in weights.graphs(model):
        where = "" if g is model.graph else f" (in subgraph {g.name!r})"
        read = _weights_read(g)
        for t in g.initializer:
            bad = _nonfinite(t) if t.name in read else 0
            if bad:
                raise QuantizeError(f"{path}: weight {t.name!r}{where} holds {bad} NaN or infinite values of "
                                    f"{int(np.prod(t.dims))}; int8 cannot represent them: fix the weights (a diverged "
                                    f"training run?) and re-export")


def constant_weights_to_initialisers(model: onnx.ModelProto, repairs: List[Repair]) -> None:
    """Weights held in Constant nodes (every paddle2onnx export) become initialisers, which is where
    onnxruntime's quantisers and tinyq's encodings look for weights. Only Constants of the main graph
    that a weight slot reads (tinyq.model.weights.WEIGHT_SLOTS), so other graphs stay as they are."""
    graph = model.graph
    read = _weights_read(graph)
    moved = []
    for node in list(graph.node):
        if node.op_type != "Constant" or node.output[0] not in read:
            continue
        value = _constant_value(node)
        if value is None or value.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE) or len(value.dims) < 2:
            continue
        tensor = TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
        moved.append(tensor)
    if moved:
        elements = sum(int(np.prod(t.dims)) for t in moved)
        repairs.append(Repair("constant_weights_to_initialisers", f"{len(moved)} weights ({elements} elements) held in "
                                                                  f"Constant nodes moved to initialisers"))


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


def model_bytes_on_disk(path: Path) -> int:
    """A model's size: the .onnx file plus every external data file it references."""
    path = Path(path)
    model = calibration.read_model(path)
    files = {_data_file(path, t, _external_fields(path, t)[0]) for t in _external_tensors(model)}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)
