"""Model sidecars (<basename>.json beside each model): reading them as native code does, and
writing them from a spec and a registry entry.

read()/parse() follow the same rules as the C++ parser (cc/tinyq/sidecar.cc), with the same
error codes; tests/vectors/sidecars/ holds the cases both are tested against. The rules
(cc/tinyq/sidecar.h): strict UTF-8 JSON with one leading UTF-8 byte order mark ignored; a number
that overflows a double or a lone UTF-16 surrogate escape is a parse_error (nlohmann refuses
both); nesting deeper than MAX_DEPTH is limit_exceeded; a key given twice in one object is
duplicate_key; integer fields must fit in int64; "onnx" must be a relative path that stays in the
sidecar's directory (onnx_path_escape). A parse_error wins over a depth error, which wins over a
duplicate key. read() reads only a regular file, and at most MAX_SIDECAR_BYTES + 1 bytes of it.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from tinyq.registry import defaults

MAX_SIDECAR_BYTES = 1024 * 1024
MAX_PATH_BYTES = 4096
MAX_ARRAY_ELEMENTS = 4096
MAX_RANK = 8
MAX_DEPTH = 64  # nested arrays and objects, the top-level object counting as 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
BOM = b"\xef\xbb\xbf"
QUANT_MODES = ("fp32", "dynamic", "static", "qat")  # enum values 0..3, as in cc/tinyq/sidecar.h


class SidecarError(Exception):
    """code is one of: io_error, too_large, parse_error, schema_error, limit_exceeded, inconsistent,
    duplicate_key, onnx_path_escape."""

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
    """An integer that fits in int64, as the C++ parser requires of integer fields."""
    return isinstance(v, int) and not isinstance(v, bool) and INT64_MIN <= v <= INT64_MAX


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_float(text: str) -> float:
    v = float(text)
    if math.isinf(v):
        raise ValueError(f"the number {text[:32]} overflows a double")
    return v


def _parse_int(text: str) -> Any:
    """An integer as nlohmann reads it: an integer when it fits in int64 or uint64, else a double
    (a parse error when that overflows)."""
    if len(text) <= 21:  # no longer than "-9223372036854775808"; longer ones are out of range anyway
        v = int(text)
        if INT64_MIN <= v <= UINT64_MAX:
            return v
    return _parse_float(text)


class _Pairs(list):
    """An object's (key, value) pairs as the parser met them, turned into a dict by _walk()."""


def _walk(doc: Any) -> Tuple[Any, bool, Optional[str], int]:
    """Turns every _Pairs into a dict. Returns (doc, whether a string or key holds a lone UTF-16
    surrogate, the first duplicate key met or None, the deepest nesting). Iterative, and it looks
    into values a duplicate key discards too, as the C++ parser's streaming pass does."""
    lone_surrogate = False
    duplicate: Optional[str] = None
    max_depth = 0
    holder: List[Any] = [doc]
    stack: List[Tuple[Any, Any, int]] = [(holder, 0, 1)]  # (container, slot, depth a container there has)
    while stack:
        parent, slot, depth = stack.pop()
        v = parent[slot]
        if isinstance(v, str):
            lone_surrogate = lone_surrogate or _has_surrogate(v)
        elif isinstance(v, _Pairs):
            max_depth = max(max_depth, depth)
            out: Dict[str, Any] = {}
            discarded: List[Any] = []
            for key, value in v:
                lone_surrogate = lone_surrogate or _has_surrogate(key)
                if key in out:
                    duplicate = key if duplicate is None else duplicate
                    discarded.append(out[key])
                out[key] = value
            parent[slot] = out
            stack.extend((discarded, i, depth + 1) for i in range(len(discarded)))
            stack.extend((out, key, depth + 1) for key in out)
        elif isinstance(v, list):
            max_depth = max(max_depth, depth)
            stack.extend((v, i, depth + 1) for i in range(len(v)))
    return holder[0], lone_surrogate, duplicate, max_depth


def _has_surrogate(s: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in s)


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


def _too_large(size: Optional[int]) -> SidecarError:
    got = f"{size} bytes, " if size is not None else ""
    return SidecarError("too_large", f"the sidecar is {got}larger than {MAX_SIDECAR_BYTES} bytes (1 MiB cap)")


def loads(data: bytes) -> Any:
    """The JSON document in data under the sidecar parsers' rules (module docstring), or
    SidecarError: parse_error, then limit_exceeded (depth), then duplicate_key. For any reader of a
    sidecar that must accept exactly what cc/tinyq/sidecar.cc accepts (registry validation too)."""
    if data.startswith(BOM):  # RFC 8259 lets a parser ignore one; nlohmann does
        data = data[len(BOM):]
    try:
        doc = json.loads(
            data.decode("utf-8"),
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
            object_pairs_hook=_Pairs,
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise SidecarError("parse_error", f"the sidecar is not valid UTF-8 JSON ({e})") from None
    except RecursionError:  # nested far deeper than MAX_DEPTH
        raise SidecarError("limit_exceeded", f"the sidecar nests arrays and objects over the limit of {MAX_DEPTH}") from None
    doc, lone_surrogate, duplicate, depth = _walk(doc)
    if lone_surrogate:
        raise SidecarError("parse_error", "the sidecar is not valid UTF-8 JSON (a lone UTF-16 surrogate escape)")
    if depth > MAX_DEPTH:
        raise SidecarError("limit_exceeded", f"the sidecar nests arrays and objects {depth} deep, over the limit of {MAX_DEPTH}")
    if duplicate is not None:
        raise SidecarError("duplicate_key", f"key '{duplicate[:64]}' appears twice in one object")
    return doc


def _safe_relative_path(p: str) -> bool:
    """Not absolute, no backslash, no '..' component, no NUL: the rule of the registry's path jail."""
    return not (p.startswith("/") or "\\" in p or "\0" in p or ".." in p.split("/"))


def parse(data: bytes) -> Sidecar:
    """A sidecar from bytes; raises SidecarError with the same code the C++ parser returns."""
    return parse_doc(data)[0]


def parse_doc(data: bytes) -> Tuple[Sidecar, Dict[str, Any]]:
    """(the sidecar, the JSON object it was read from), under parse()'s rules."""
    if len(data) > MAX_SIDECAR_BYTES:
        raise _too_large(len(data))
    doc = loads(data)
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
    if sc.onnx is not None and not _safe_relative_path(sc.onnx):
        raise SidecarError(
            "onnx_path_escape",
            "field 'onnx' must be a path relative to the sidecar's directory that stays inside it "
            "(not absolute, no '..', no backslash or NUL)",
        )
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
    return sc, doc


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read(path: Path) -> Sidecar:
    """The sidecar at path; SidecarError messages name the file. Only a regular file is read (a
    FIFO would block open() until a writer came), and at most one byte past the cap."""
    return read_doc(path)[0]


def read_doc(path: Path) -> Tuple[Sidecar, Dict[str, Any]]:
    """(the sidecar at path, its JSON object), read once, as read() says."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise SidecarError("io_error", f"{path}: cannot open the sidecar: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a file")
            raise SidecarError("io_error", f"{path}: not a regular file ({kind}); refusing to read it as the sidecar")
        if st.st_size > MAX_SIDECAR_BYTES:  # refused unread, with its real size
            e = _too_large(st.st_size)
            raise SidecarError(e.code, f"{path}: {e}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(MAX_SIDECAR_BYTES + 1)  # a file that grew since fstat: one byte past the cap is enough
    except OSError as e:
        raise SidecarError("io_error", f"{path}: cannot read the sidecar: {e.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > MAX_SIDECAR_BYTES:
        e = _too_large(None)
        raise SidecarError(e.code, f"{path}: {e}")
    try:
        return parse_doc(data)
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
    _registry_defaults(out)
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


def _registry_defaults(out: Dict[str, Any]) -> None:
    out.setdefault("quant_mode", defaults.DEFAULT_QUANT_MODE)
    out.setdefault("quant_accuracy_budget_plcc", defaults.DEFAULT_BUDGET_PLCC)


def sync(sidecar: Mapping[str, Any], entry: Mapping[str, Any]) -> Dict[str, Any]:
    """The sidecar with its registry-shared fields replaced by the entry's."""
    out = {k: v for k, v in sidecar.items() if k not in FROM_REGISTRY}
    out.update({k: entry[k] for k in FROM_REGISTRY if k in entry})
    out["onnx"] = Path(entry["onnx"]).name
    _registry_defaults(out)
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
