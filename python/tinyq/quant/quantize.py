"""Producing int8 models: onnxruntime's quantisers and tinyq's encodings.

load_for_quantization() reads the fp32 model with tinyq.model.loading's repairs, copies
initialisers shared by several quantisable nodes (a siamese backbone) per node, so that every int8
kernel owns its weights (onnxruntime's x64quantprecision transformer fails on shared ones),
converts opsets 7..12 to 17 (tinyq.model.opsets, outputs checked bit for bit), and refuses, with a
message naming the fix: fp16 models, other opsets outside 13..21, and a model that is already
quantised (pass its fp32 source).

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
Every artefact is then compacted (tinyq.model.compaction): nothing that only costs bytes or leaks
the exporter's environment.
Every artefact's weights are counted (tinyq.model.weights): the fraction quantised, and each op left
in fp32 with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tinyq.model import compaction, loading, opsets, weights
from tinyq.model.loading import QuantizeError  # raised by the loading and the encoders alike
from tinyq.quant import overflow

MIN_OPSET, MAX_OPSET = 13, 21
ENCODINGS = ("auto", "weight_only", "dynamic")
_FP16 = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
_WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "ConvTranspose": 1}
MIN_WEIGHT_ELEMENTS = 16  # smaller weights cost more in scales than int8 saves
DEFAULT_CALIBRATION_BATCH = 32


def _unshare_initialisers(model: onnx.ModelProto, repairs: List[loading.Repair]) -> None:
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
        repairs.append(loading.Repair("shared_initialisers_unshared", f"{shared} initialisers read by several nodes: {copied} copies"))


def load_for_quantization(path: Path) -> Tuple[onnx.ModelProto, List[loading.Repair]]:
    """The fp32 model at path, repaired and shape-inferred; raises QuantizeError when it cannot be."""
    path = Path(path)
    model, repairs = loading.load_model(path)
    model = opsets.upgrade(path, model, MIN_OPSET, repairs)  # opset 7-12: converted, outputs checked

    opset = loading.model_opset(model)
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
    loading.constant_weights_to_initialisers(model, repairs)
    loading.refuse_unusable(path, model)
    _keep_nonfinite_constants(model, repairs)
    loading.repair_value_info(model, repairs)
    _unshare_initialisers(model, repairs)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except Exception as e:
        raise QuantizeError(f"{path}: the graph fails ONNX shape inference or checks after repair: {e}") from None
    return model, repairs


def _reads_nonfinite(model: onnx.ModelProto, bad: Optional[set] = None) -> List[onnx.NodeProto]:
    """The nodes static QDQ would quantise that read a NaN or infinite constant (a mask); bad: those
    constants' names, when already known (tinyq.model.loading.nonfinite_constants)."""
    bad = loading.nonfinite_constants(model.graph) if bad is None else bad
    return [n for n in model.graph.node if n.op_type in STATIC_OP_TYPES and bad.intersection(n.input)]


def _keep_nonfinite_constants(model: onnx.ModelProto, repairs: List[loading.Repair]) -> None:
    """A -inf mask or fill value is not a weight: kept as it is, and every node static QDQ would
    quantise that reads one stays fp32 (named, so that onnxruntime can exclude it)."""
    bad = loading.nonfinite_constants(model.graph)
    if not bad:
        return
    readers = _reads_nonfinite(model, bad)
    taken = {n.name for n in model.graph.node}
    for i, node in enumerate(readers):
        if not node.name:
            node.name = next(f"tinyq_reads_nonfinite_{i}_{k}" for k in range(len(taken) + 1)
                             if f"tinyq_reads_nonfinite_{i}_{k}" not in taken)
            taken.add(node.name)
    kept = f"; {len(readers)} node(s) reading them stay fp32 in static QDQ ({', '.join(n.op_type for n in readers)})" if readers else ""
    repairs.append(loading.Repair("nonfinite_constants_kept", f"{len(bad)} constant(s) hold NaN or infinite values "
                                                             f"(e.g. {sorted(bad)[0]!r}): not weights, kept as they are{kept}"))


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


# --- what each artefact quantised -------------------------------------------------------------

_ORT_DYNAMIC_GAPS = {
    "ConvTranspose": "onnxruntime's quantize_dynamic has no integer ConvTranspose; --encoding=weight_only quantises it",
}


def _reason(encoding: str, op: str, elements: int) -> str:
    if op in weights.RECURRENT_OPS and not (encoding == "dynamic" and op == "LSTM"):
        return (f"no tinyq encoding quantises {op} weights (onnxruntime's only integer recurrent kernel is "
                f"quantize_dynamic's LSTM: --encoding=dynamic)")
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
    out = compaction.compact(out)
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
    compact: bool = True,
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
    compact: False keeps the fp32 node and tensor names (for tinyq.search.layer_costs; never shipped).
    """
    from tinyq.quant import ort_linear
    from tinyq.quant import rewrites as graph_rewrites
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    batch = batch or calibration_batch(model, len(next(iter(calibration.values()))))

    with tempfile.TemporaryDirectory(prefix="tinyq_ptq_") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        try:
            with _quiet_onnxruntime(), ort_linear.linear_steps():  # linear in the graph's size
                quantize_static(
                    str(src),
                    str(dst),
                    calibration_reader(calibration, batch),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(STATIC_OP_TYPES),
                    nodes_to_exclude=list(exclude_nodes) + [n.name for n in _reads_nonfinite(model)],
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
        return (compaction.compact(qdq) if compact else qdq).SerializeToString()


# --- what both PTQ tools share ---------------------------------------------------------------

EXIT_LARGER = 3  # the int8 artefact was written but is not smaller than its fp32 source
EXIT_NOTHING_QUANTISED = 4  # refused: the artefact would quantise no weight; nothing written


def default_output(fp32: Path) -> Path:
    """<basename>.int8.onnx beside the fp32 model."""
    name = fp32.name[: -len(".onnx")] if fp32.name.endswith(".onnx") else fp32.name
    return fp32.with_name(name + ".int8.onnx")


def size_fields(fp32: Path, int8_bytes: int) -> Dict[str, object]:
    fp32_bytes = loading.model_bytes_on_disk(fp32)
    return {
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "size_ratio": round(fp32_bytes / int8_bytes, 4),
        "larger_than_fp32": int8_bytes >= fp32_bytes,
    }
