"""Model sidecars (<basename>.json beside each model): reading them as native code does, and
writing them from a spec and a registry entry.

read()/parse() follow the same rules as the C++ parser (cc/tinyq/sidecar.cc), with the same
error codes; tests/vectors/sidecars/ holds the cases both are tested against.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from tinyq import registry

MAX_SIDECAR_BYTES = 1024 * 1024
MAX_PATH_BYTES = 4096
MAX_ARRAY_ELEMENTS = 4096
MAX_RANK = 8
QUANT_MODES = ("fp32", "dynamic", "static", "qat")  # enum values 0..3, as in cc/tinyq/sidecar.h


class SidecarError(Exception):
    """code is one of: io_error, too_large, parse_error, schema_error, limit_exceeded, inconsistent."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


@dataclass
class Sidecar:
    id: str
    kind: Optional[str] = None
    onnx: Optional[str] = None
    opset: int = 0
    sha256: Optional[str] = None
    int8_sha256: Optional[str] = None
    quant_mode: str = "fp32"
    quant_accuracy_budget_plcc: float = 0.01
    inputs: List[Tuple[str, List[int]]] = field(default_factory=list)
    outputs: List[Tuple[str, List[int]]] = field(default_factory=list)
    features: List[str] = field(default_factory=list)
    input_mean: Optional[List[float]] = None
    input_std: Optional[List[float]] = None
    arch: Any = None
    n_params: int = -1
    warnings: List[str] = field(default_factory=list)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _str(doc: Dict[str, Any], name: str, required: bool = False) -> Optional[str]:
    if name not in doc:
        if required:
            raise SidecarError("schema_error", f"field '{name}' is required")
        return None
    if not isinstance(doc[name], str):
        raise SidecarError("schema_error", f"field '{name}' must be a string")
    return doc[name]


def _array(doc: Dict[str, Any], name: str, ok) -> List[Any]:
    v = doc[name]
    if not isinstance(v, list):
        raise SidecarError("schema_error", f"field '{name}' must be an array")
    if len(v) > MAX_ARRAY_ELEMENTS:
        raise SidecarError("limit_exceeded", f"field '{name}' has {len(v)} elements, over the limit of {MAX_ARRAY_ELEMENTS}")
    if not all(ok(e) for e in v):
        raise SidecarError("schema_error", f"field '{name}' has an element of the wrong type")
    return v


def _shape(v: Any, name: str) -> List[int]:
    if not isinstance(v, list):
        raise SidecarError("schema_error", f"field '{name}' must hold arrays (shapes)")
    if len(v) > MAX_RANK:
        raise SidecarError("limit_exceeded", f"a shape in '{name}' has rank {len(v)}, over the limit of {MAX_RANK}")
    out = []
    for d in v:
        if _is_int(d):
            out.append(d)
        elif d is None or isinstance(d, str):
            out.append(-1)  # a named or unknown dimension is dynamic
        else:
            raise SidecarError("schema_error", f"a shape in '{name}' has a dimension that is not an integer")
    return out


def _specs(doc: Dict[str, Any], which: str) -> List[Tuple[str, List[int]]]:
    names_key, shapes_key = f"{which}_names", f"{which}_shapes"
    if names_key in doc:
        names = _array(doc, names_key, lambda e: isinstance(e, str))
        shapes: List[List[int]] = []
        if shapes_key in doc:
            shapes = [_shape(s, shapes_key) for s in _array(doc, shapes_key, lambda e: True)]
            if len(shapes) != len(names):
                raise SidecarError("inconsistent", f"'{names_key}' has {len(names)} entries but '{shapes_key}' has {len(shapes)}")
        return [(n, shapes[i] if i < len(shapes) else []) for i, n in enumerate(names)]
    name = _str(doc, f"{which}_name")
    if name is None:
        return []
    shape = _shape(doc[f"{which}_shape"], f"{which}_shape") if f"{which}_shape" in doc else []
    return [(name, shape)]


def parse(data: bytes) -> Sidecar:
    """A sidecar from bytes; raises SidecarError with the same code the C++ parser returns."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise SidecarError("too_large", f"the sidecar is {len(data)} bytes, over the 1 MiB limit")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise SidecarError("parse_error", f"the sidecar is not valid UTF-8 JSON ({e})") from None
    if not isinstance(doc, dict):
        raise SidecarError("schema_error", "the sidecar must be a JSON object")
    # "name" identifies a reference toolkit sidecar that has no "id".
    sc = Sidecar(id=_str(doc, "id") if "id" in doc else _str(doc, "name"))
    if sc.id is None:
        raise SidecarError("schema_error", "field 'id' (or the reference toolkit's 'name') is required")
    sc.kind = _str(doc, "kind")
    sc.onnx = _str(doc, "onnx")
    if sc.onnx is not None and len(sc.onnx.encode()) > MAX_PATH_BYTES:
        raise SidecarError("limit_exceeded", f"field 'onnx' is over the path limit of {MAX_PATH_BYTES} bytes")
    opset = doc.get("opset", doc.get("onnx_opset"))  # "onnx_opset" is accepted as an alias
    if opset is not None or "opset" in doc or "onnx_opset" in doc:
        if not _is_int(opset) or not 0 <= opset <= 1000:
            raise SidecarError("schema_error", "field 'opset' must be an integer")
        sc.opset = opset
    for name in ("sha256", "int8_sha256"):
        if name in doc:
            v = doc[name]
            if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
                raise SidecarError("schema_error", f"field '{name}' must be 64 lowercase hex digits")
            setattr(sc, name, v)
    if "quant_mode" in doc:
        mode = doc["quant_mode"]
        if not isinstance(mode, str):
            raise SidecarError("schema_error", "field 'quant_mode' must be a string")
        if mode in QUANT_MODES:
            sc.quant_mode = mode
        else:
            sc.warnings.append(f"unknown quant_mode {mode[:64]!r}; using fp32")
    if "quant_accuracy_budget_plcc" in doc:
        if not _is_number(doc["quant_accuracy_budget_plcc"]):
            raise SidecarError("schema_error", "field 'quant_accuracy_budget_plcc' must be a number")
        sc.quant_accuracy_budget_plcc = float(doc["quant_accuracy_budget_plcc"])
    sc.inputs = _specs(doc, "input")
    sc.outputs = _specs(doc, "output")
    if "features" in doc:
        sc.features = _array(doc, "features", lambda e: isinstance(e, str))
    if "input_mean" in doc:
        sc.input_mean = [float(v) for v in _array(doc, "input_mean", _is_number)]
    if "input_std" in doc:
        sc.input_std = [float(v) for v in _array(doc, "input_std", _is_number)]
    n = len(sc.features)
    if (sc.input_mean is not None and len(sc.input_mean) != n) or (sc.input_std is not None and len(sc.input_std) != n):
        raise SidecarError("inconsistent", "features, input_mean and input_std must have the same length")
    sc.arch = doc.get("arch")
    if "n_params" in doc:
        if not _is_int(doc["n_params"]):
            raise SidecarError("schema_error", "field 'n_params' must be an integer")
        sc.n_params = doc["n_params"]
    return sc


def read(path: Path) -> Sidecar:
    """The sidecar at path; SidecarError messages name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIDECAR_BYTES + 1)  # one byte past the cap is enough to refuse
    except OSError as e:
        raise SidecarError("io_error", f"{path}: cannot read the sidecar: {e.strerror}") from None
    try:
        return parse(data)
    except SidecarError as e:
        raise SidecarError(e.code, f"{path}: {e}") from None


# Sidecar fields copied verbatim from the registry entry (the trust root).
FROM_REGISTRY = ("id", "kind", "onnx", "opset", "sha256", "quant_mode", "int8_sha256", "quant_accuracy_budget_plcc")


def build(
    entry: Mapping[str, Any],
    *,
    inputs: Sequence[Dict[str, Any]],
    outputs: Sequence[Dict[str, Any]],
    arch: Optional[Mapping[str, Any]],
    n_params: int,
    features: Optional[Sequence[str]] = None,
    input_mean: Optional[Sequence[float]] = None,
    input_std: Optional[Sequence[float]] = None,
    notes: Optional[str] = None,
    input_semantics: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """The sidecar for a registry entry. inputs/outputs: [{"name": ..., "shape": [...]}], -1 = dynamic."""
    out: Dict[str, Any] = {k: entry[k] for k in FROM_REGISTRY if k in entry}
    out.setdefault("quant_mode", registry.DEFAULT_QUANT_MODE)
    out.setdefault("quant_accuracy_budget_plcc", registry.DEFAULT_BUDGET_PLCC)
    out["onnx"] = Path(entry["onnx"]).name
    # The first input and output under the reference toolkit's singular names, all under plurals.
    out["input_name"], out["input_shape"] = inputs[0]["name"], list(inputs[0]["shape"])
    out["output_name"], out["output_shape"] = outputs[0]["name"], list(outputs[0]["shape"])
    out["input_names"] = [i["name"] for i in inputs]
    out["input_shapes"] = [list(i["shape"]) for i in inputs]
    out["output_names"] = [o["name"] for o in outputs]
    out["output_shapes"] = [list(o["shape"]) for o in outputs]
    if arch is not None:
        out["arch"] = dict(arch)
    out["n_params"] = int(n_params)
    if input_semantics:
        out["input_semantics"] = dict(input_semantics)
    if features is not None:
        out["features"] = list(features)
        out["input_mean"] = [float(v) for v in input_mean]
        out["input_std"] = [float(v) for v in input_std]
    if notes:
        out["notes"] = notes
    return out


def sync(sidecar: Mapping[str, Any], entry: Mapping[str, Any]) -> Dict[str, Any]:
    """The sidecar with its registry-shared fields replaced by the entry's."""
    out = {k: v for k, v in sidecar.items() if k not in FROM_REGISTRY}
    out.update({k: entry[k] for k in FROM_REGISTRY if k in entry})
    out["onnx"] = Path(entry["onnx"]).name
    out.setdefault("quant_mode", registry.DEFAULT_QUANT_MODE)
    out.setdefault("quant_accuracy_budget_plcc", registry.DEFAULT_BUDGET_PLCC)
    return out


def graph_io(model: Any) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """The inputs and outputs of an onnx.ModelProto as build() takes them: -1 for a dynamic dimension.
    Initialisers listed as graph inputs (old exporters) are not inputs."""
    inits = {t.name for t in model.graph.initializer}

    def spec(v) -> Dict[str, Any]:
        dims = v.type.tensor_type.shape.dim
        return {"name": v.name, "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in dims]}

    return [spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output]


def n_params(model: Any) -> int:
    """Elements of an onnx.ModelProto's floating-point initialisers: its parameter count."""
    from onnx import TensorProto

    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    total = 0
    for t in model.graph.initializer:
        if t.data_type in floats:
            n = 1
            for d in t.dims:
                n *= d
            total += n
    return total
