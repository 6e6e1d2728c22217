"""Producing int8 models: repairs for real exports, onnxruntime's quantisers, tinyq's encodings.

Before quantising, load_for_quantization() repairs the traps found in real exports and refuses,
with a message naming the fix, what cannot be repaired:
  - graph.value_info entries for initialisers, duplicates or stale shapes: dropped, then shapes
    are inferred again ("Inferred shape and existing shape differ" in quantize_dynamic);
  - external data whose `location` no longer names the file beside the model: re-pointed at the
    one data file that is there, then inlined (tiny models need no external data);
  - fp16 models and opsets outside 13..21: refused.

Encodings (all data-free, so all serve quant_mode "dynamic"):
  - "dynamic": onnxruntime's quantize_dynamic (int8 weights, activations quantised at run time);
  - "weight_only": int8 weights stored as initialisers feeding standard DequantizeLinear nodes,
    activations stay fp32. onnxruntime's own weight-only path (MatMulNBits) is a contrib op for
    2-D MatMul with K >= its block size, so it cannot serve 6-input MLPs, Conv or OpenVINO; this
    one uses standard ONNX ops only.
Static QDQ (quant_mode "static") is onnxruntime's quantize_static fed from a calibration .npz.
compact() then strips what only costs bytes: doc strings, node names, long tensor names and
duplicate scale tensors.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_OPSET, MAX_OPSET = 13, 21
ENCODINGS = ("auto", "weight_only", "dynamic")
_FP16 = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1}


class QuantizeError(Exception):
    """The model cannot be quantised as given; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class Repair:
    code: str
    detail: str


def _opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _external_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            yield t


def _data_file(path: Path, tensor: TensorProto) -> Tuple[str, str]:
    """(recorded location, the data file actually beside the model) for an external tensor.

    A stale location (the model was renamed after export) resolves to the one data file named
    after the model; anything else is an error naming the fix.
    """
    location = next(e.value for e in tensor.external_data if e.key == "location")
    if (path.parent / location).is_file():
        return location, location
    stems = {path.name, path.stem}
    candidates = sorted(p for p in path.parent.glob("*.data") if any(p.name.startswith(s) for s in stems))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise QuantizeError(
            f"{path}: initialiser {tensor.name!r} names external data {location!r}, which is not beside the model "
            f"(candidate data files: {found}); put the data file beside the model or fix its location"
        )
    return location, candidates[0].name


def _repair_external_data(path: Path, model: onnx.ModelProto, repairs: List[Repair]) -> None:
    tensors = list(_external_tensors(model))
    if not tensors:
        return
    for t in tensors:
        location, actual = _data_file(path, t)
        if actual != location:
            next(e for e in t.external_data if e.key == "location").value = actual
            repairs.append(Repair("external_data_location", f"{t.name}: {location} -> {actual}"))
    onnx.load_external_data_for_model(model, str(path.parent))
    for t in model.graph.initializer:
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


def load_for_quantization(path: Path) -> Tuple[onnx.ModelProto, List[Repair]]:
    """The fp32 model at path, repaired and shape-inferred; raises QuantizeError when it cannot be."""
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"{path}: model not found; pass the path of an fp32 .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends
        raise QuantizeError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    repairs: List[Repair] = []
    _repair_external_data(path, model, repairs)

    opset = _opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise QuantizeError(
            f"{path}: opset {opset} is not supported (tinyq quantises opsets {MIN_OPSET}-{MAX_OPSET}); "
            f"re-export with opset_version=17"
        )
    half = [t.name for t in model.graph.initializer if t.data_type in _FP16]
    half += [v.name for v in (*model.graph.input, *model.graph.output) if v.type.tensor_type.elem_type in _FP16]
    if half:
        raise QuantizeError(
            f"{path}: fp16 model ({len(half)} fp16 tensors, e.g. {half[0]!r}); int8 quantisation starts from fp32: "
            f"re-export the model in float32 (model.float()) and quantise that"
        )
    _repair_value_info(model, repairs)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except Exception as e:
        raise QuantizeError(f"{path}: the graph fails ONNX shape inference or checks after repair: {e}") from None
    return model, repairs


# --- encodings -----------------------------------------------------------------------------


def quantize_dynamic(model: onnx.ModelProto, per_channel: bool) -> onnx.ModelProto:
    """onnxruntime's quantize_dynamic, int8 weights."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="tinyq_ptq_") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        ort_quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
        return onnx.load(str(dst))


def _weight_axis(node: onnx.NodeProto, ndim: int) -> int:
    """The output-channel axis of a node's weight, for per-channel scales."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1  # MatMul: [..., K, N]


def weight_only(model: onnx.ModelProto, per_channel: bool = True, min_elements: int = 16) -> onnx.ModelProto:
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


def compact(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same computation in fewer bytes: no doc strings or node names, short tensor names,
    one copy of each repeated small initialiser (e.g. scales and zero points)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    model.doc_string = ""
    model.producer_version = ""
    del model.metadata_props[:]
    graph.doc_string = ""
    del graph.value_info[:]

    # Share identical small initialisers, but only those read by QuantizeLinear/DequantizeLinear
    # alone: onnxruntime's x64quantprecision transformer rewrites an int8 kernel's initialisers
    # in place and fails on shared ones ("Attempt to replace the existing tensor").
    consumers: Dict[str, set] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    shareable = {n for n, ops in consumers.items() if ops <= {"QuantizeLinear", "DequantizeLinear"}}
    canonical: Dict[Tuple[int, Tuple[int, ...], bytes], str] = {}
    alias: Dict[str, str] = {}
    kept = []
    for t in graph.initializer:
        arr = numpy_helper.to_array(t)
        key = (t.data_type, tuple(arr.shape), arr.tobytes())
        if t.name not in shareable:
            kept.append(t)
            continue
        if arr.size <= 64 and key in canonical:
            alias[t.name] = canonical[key]
            continue
        canonical.setdefault(key, t.name)
        kept.append(t)
    del graph.initializer[:]
    graph.initializer.extend(kept)

    # Short names for everything that is not a graph input or output.
    io_names = {v.name for v in (*graph.input, *graph.output)}
    rename: Dict[str, str] = {}

    def short(name: str) -> str:
        name = alias.get(name, name)
        if not name or name in io_names:
            return name
        if name not in rename:
            rename[name] = format(len(rename), "x")
        return rename[name]

    for t in graph.initializer:
        t.name = short(t.name)
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for v in graph.input:
        v.doc_string = ""
    for v in graph.output:
        v.doc_string = ""
    onnx.checker.check_model(model)
    return model


@dataclass
class Encoded:
    encoding: str
    model_bytes: bytes

    @property
    def size(self) -> int:
        return len(self.model_bytes)


def encode(model: onnx.ModelProto, encoding: str, per_channel: bool) -> Encoded:
    """One int8 encoding, compacted. "auto" builds every data-free encoding and keeps the smallest."""
    if encoding == "auto":
        options = [encode(model, e, per_channel) for e in ENCODINGS if e != "auto"]
        return min(options, key=lambda e: (e.size, e.encoding))
    if encoding == "weight_only":
        out = weight_only(model, per_channel=per_channel)
    elif encoding == "dynamic":
        out = quantize_dynamic(model, per_channel=per_channel)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; one of {ENCODINGS}")
    return Encoded(encoding, compact(out).SerializeToString())


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
    batch: int = 32,
) -> bytes:
    """onnxruntime's quantize_static in QDQ format (uint8 activations, int8 symmetric weights) on
    STATIC_OP_TYPES, calibrated on the arrays (one per input); exclude_nodes stay fp32.

    calibration_cache: onnxruntime's own cache of the ranges (written on the first call, read on
    the next), so that candidates differing only in granularity or fp32 nodes share one
    calibration; the ranges and so the bytes are the same as without it.
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(calibration.values())))
            self._batches = iter([{k: v[i : i + batch] for k, v in calibration.items()} for i in range(0, n, batch)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="tinyq_ptq_") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(STATIC_OP_TYPES),
            nodes_to_exclude=list(exclude_nodes),
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={"CalibTensorRangeSymmetric": False},
            calibration_cache_path=calibration_cache,
        )
        return compact(onnx.load(str(dst))).SerializeToString()


# --- what both PTQ tools share ---------------------------------------------------------------

EXIT_LARGER = 3  # the int8 artefact was written but is not smaller than its fp32 source


def default_output(fp32: Path) -> Path:
    """<basename>.int8.onnx beside the fp32 model."""
    name = fp32.name[: -len(".onnx")] if fp32.name.endswith(".onnx") else fp32.name
    return fp32.with_name(name + ".int8.onnx")


def model_bytes_on_disk(path: Path) -> int:
    """A model's size: the .onnx file plus every external data file it references."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    files = {_data_file(path, t)[1] for t in _external_tensors(model)}
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


def size_fields(fp32: Path, int8_bytes: int) -> Dict[str, object]:
    fp32_bytes = model_bytes_on_disk(fp32)
    return {
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "size_ratio": round(fp32_bytes / int8_bytes, 4),
        "larger_than_fp32": int8_bytes >= fp32_bytes,
    }


def announce(tool: str, fp32: Path, out: Path, int8_bytes: int, what: str) -> Tuple[Dict[str, object], int]:
    """Prints what was written, and loudly when it is not smaller than its source.

    Returns the report's size fields and the tool's exit code (0, or EXIT_LARGER).
    """
    import sys

    sizes = size_fields(fp32, int8_bytes)
    print(f"{tool}: wrote {out} ({what}, {sizes['fp32_bytes']} -> {sizes['int8_bytes']} B, x{sizes['size_ratio']:.2f})")
    if not sizes["larger_than_fp32"]:
        return sizes, 0
    print(
        f"WARNING: {out} ({sizes['int8_bytes']} B) is NOT SMALLER than its fp32 source {fp32} ({sizes['fp32_bytes']} B); "
        f"tinyq will not register it. Try --encoding=weight_only, or keep the model fp32.",
        file=sys.stderr,
    )
    return sizes, EXIT_LARGER
