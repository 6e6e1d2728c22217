"""The model registry (model/tiny/registry.json): loading, validation and a typed view.

Validation runs in two layers:
  1. JSON Schema 2020-12 (model/tiny/registry.schema.json) for structure and types, including
     "non-fp32 needs int8_sha256" and "static needs quant_calibration_set";
  2. checks a schema cannot express: unique ids, paths jailed inside the registry's directory
     (symlinks included), file hashes, the calibration set on disk, each sidecar agreeing
     with its entry, and for every quantised entry an int8 file that quantises at least one
     weight and a soak fixture (fixtures/<id>.soak.npz) that fits the model, since the gate
     judges the budget on it.

Sidecars written for the reference toolkit validate unchanged: they may carry `name` instead of
`id`, `onnx_opset` for `opset`, a finer `kind` (e.g. shot_detector, an nr model), and leave out
fields; a field a sidecar leaves out is not a disagreement.

Every problem is a Finding naming the entry, the JSON pointer, what is wrong and how to fix it.
Entry paths resolve against the registry's own directory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterable, List, Optional, Tuple

import jsonschema

from tinyq.io.errors import TooLarge
from tinyq.io.fileio import file_problem, read_regular, sha256_file
from tinyq.registry import heldout, layout
from tinyq.registry.defaults import DEFAULT_BUDGET_PLCC, DEFAULT_QUANT_MODE
from tinyq.registry.registry_json import parse_registry
from tinyq.registry.registry_findings import _FIXES, WARNING_CODES, Finding, errors  # noqa: F401  (re-exported)

QUANT_MODES = ("fp32", "dynamic", "static", "qat")
KINDS = ("fr", "nr", "filter", "classifier", "regressor")
# Every kind the reference toolkit's sidecars use, and the registry kind it belongs to.
REFERENCE_KINDS = {"fr": "fr", "nr": "nr", "filter": "filter", "classifier": "classifier", "regressor": "regressor",
                   "shot_detector": "nr"}
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # registry.schema.json's id: pattern and maxLength 64
MIN_OPSET, MAX_OPSET = 7, 21  # registry.schema.json's opset range

# The source tree root; under Bazel, the runfiles root, which mirrors it.
_TINYQ_ROOT = Path(__file__).parent.parent.parent.parent
SCHEMA_PATH = _TINYQ_ROOT / "model" / "tiny" / "registry.schema.json"
SIDECAR_SCHEMA_PATH = _TINYQ_ROOT / "model" / "tiny" / "sidecar.schema.json"
DEFAULT_REGISTRY = Path("model") / "tiny" / "registry.json"

# Path-valued entry fields, all jailed inside the registry's directory.
_PATH_FIELDS = ("onnx", "quant_calibration_set", "sigstore_bundle")

# Fields a sidecar shares with its registry entry, with the default an absent entry field stands for.
_SHARED_FIELDS: Tuple[Tuple[str, Any], ...] = (
    ("id", None),
    ("kind", None),
    ("sha256", None),
    ("opset", None),
    ("quant_mode", DEFAULT_QUANT_MODE),
    ("int8_sha256", None),
    ("quant_accuracy_budget_plcc", DEFAULT_BUDGET_PLCC),
)
@dataclass(frozen=True)
class ModelEntry:
    """A registry entry with defaults applied and paths resolved against the registry's directory."""

    id: str
    kind: str
    onnx: Path
    sha256: str
    quant_mode: str
    int8_sha256: Optional[str]
    calibration_set: Optional[Path]
    budget_plcc: float
    opset: Optional[int]
    raw: Dict[str, Any] = field(repr=False)

    @property
    def int8_onnx(self) -> Path:
        return layout.int8_path_for(self.onnx)

    @property
    def sidecar(self) -> Path:
        return layout.sidecar_path_for(self.onnx)

    @property
    def quantised(self) -> bool:
        return self.quant_mode != "fp32"


@dataclass(frozen=True)
class Registry:
    path: Path
    data: Dict[str, Any]
    models: Tuple[ModelEntry, ...]

    @property
    def root(self) -> Path:
        return self.path.parent

    def get(self, model_id: str) -> ModelEntry:
        for m in self.models:
            if m.id == model_id:
                return m
        known = ", ".join(m.id for m in self.models) or "none"
        raise KeyError(f"{self.path}: no model with id {model_id!r} (known: {known})")

    def quantised(self) -> List[ModelEntry]:
        return [m for m in self.models if m.quantised]


class RegistryReadError(Exception):
    """The registry file could not be read at all (usage / I/O error)."""


class RegistryInvalid(Exception):
    def __init__(self, path: Path, findings: List[Finding]):
        self.path = path
        self.findings = findings
        super().__init__("\n".join(f.format(path) for f in findings))


def _pointer(parts: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


MAX_JSON_BYTES = 10 * 1024 * 1024  # a registry or sidecar larger than this is not one


def read_json(path: Path) -> Any:
    """A JSON file, strictly UTF-8, from a regular file (ValueError when it is not JSON, or nested
    too deeply to be tinyq's)."""
    raw = read_regular(path, MAX_JSON_BYTES)
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ValueError("nested too deeply to be a tinyq JSON file") from None


_schema_cache: Dict[Path, jsonschema.protocols.Validator] = {}


def _validator(schema_path: Path) -> jsonschema.protocols.Validator:
    if schema_path not in _schema_cache:
        schema = read_json(schema_path)
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        _schema_cache[schema_path] = cls(schema)
    return _schema_cache[schema_path]


class _Checker:
    def __init__(self, path: Path, data: Any, read_held_out: bool = True):
        self.path = path
        self.data = data
        self.read_held_out = read_held_out
        self.findings: List[Finding] = []
        # The jail: the registry's real directory. Under Bazel's runfiles, the registry and the
        # files it names are symlinks into the same source directory, so they compare equal.
        self.root_real = path.resolve().parent

    def add(self, code: str, entry: str, pointer: str, message: str) -> None:
        self.findings.append(Finding(code, entry, pointer, message, _FIXES[code]))

    def entry_name(self, index: int) -> str:
        models = self.data.get("models") if isinstance(self.data, dict) else None
        if isinstance(models, list) and index < len(models):
            m = models[index]
            if isinstance(m, dict) and isinstance(m.get("id"), str):
                return m["id"]
        return f"models[{index}]"

    # --- layer 1: JSON Schema -----------------------------------------------------------------
    def check_schema(self) -> set:
        """Schema findings; returns the indices of entries with schema problems."""
        bad_entries = set()
        errors = sorted(_validator(SCHEMA_PATH).iter_errors(self.data), key=lambda e: list(map(str, e.absolute_path)))
        for err in errors:
            path = list(err.absolute_path)
            entry = "(registry)"
            if len(path) >= 2 and path[0] == "models" and isinstance(path[1], int):
                entry = self.entry_name(path[1])
                bad_entries.add(path[1])
            code, pointer, message = self._classify(err, path)
            self.add(code, entry, pointer, message)
        return bad_entries

    @staticmethod
    def _classify(err: jsonschema.ValidationError, path: List[Any]) -> Tuple[str, str, str]:
        pointer = _pointer(path)
        if err.validator == "required":
            missing = [f for f in err.validator_value if isinstance(err.instance, dict) and f not in err.instance]
            name = missing[0] if missing else "?"
            if name == "int8_sha256":
                return (
                    "int8_sha256_missing",
                    pointer + "/int8_sha256",
                    f"quant_mode is {err.instance.get('quant_mode')!r} but int8_sha256 is absent",
                )
            if name == "quant_calibration_set":
                return (
                    "calibration_set_missing",
                    pointer + "/quant_calibration_set",
                    "quant_mode is 'static' but quant_calibration_set is absent",
                )
            return "missing_field", pointer + "/" + name, f"required field {name!r} is absent"
        if err.validator == "additionalProperties":
            return "unknown_field", pointer, err.message
        if err.validator == "type":
            return "wrong_type", pointer, f"expected {err.validator_value}, got {json.dumps(err.instance)}"
        if err.validator == "pattern" and path and path[-1] in _PATH_FIELDS and str(err.instance).startswith(("/", "\\")):
            return "path_escape", pointer, f"path {err.instance!r} is absolute; entry paths are relative to the registry"
        if err.validator == "enum" and path and path[-1] == "quant_mode":
            return "unknown_quant_mode", pointer, f"unknown quant_mode {json.dumps(err.instance)}"
        return "bad_value", pointer, err.message

    # --- layer 2: what a schema cannot express ------------------------------------------------
    def check_unique_ids(self) -> None:
        seen: Dict[str, int] = {}
        for i, m in enumerate(self.data.get("models", [])):
            mid = m.get("id") if isinstance(m, dict) else None
            if not isinstance(mid, str):
                continue
            if mid in seen:
                self.add("duplicate_id", mid, f"/models/{i}/id", f"id {mid!r} is also used by models[{seen[mid]}]")
            else:
                seen[mid] = i

    def jailed(self, entry: str, pointer: str, value: str) -> Optional[Path]:
        """The resolved path, or None (with a finding) when it leaves the registry's directory."""
        rel = PurePosixPath(value)
        if rel.is_absolute() or "\\" in value or ".." in rel.parts:
            self.add("path_escape", entry, pointer, f"path {value!r} is absolute or climbs with '..'")
            return None
        full = self.path.parent / rel
        try:
            real = full.resolve()
        except (OSError, RuntimeError) as e:  # symlink loops
            self.add("path_escape", entry, pointer, f"path {value!r} cannot be resolved: {e}")
            return None
        if not real.is_relative_to(self.root_real):
            self.add("path_escape", entry, pointer, f"path {value!r} resolves to {real}, outside {self.root_real}")
            return None
        return full

    def check_hash(self, code: str, entry: str, pointer: str, path: Path, expected: str, what: str) -> None:
        if not path.is_file():
            self.add("file_missing", entry, pointer, f"{what} {path} does not exist")
            return
        actual = sha256_file(path)
        if actual != expected:
            self.add(code, entry, pointer, f"{what} {path} has sha256 {actual}, the registry pins {expected}")

    def check_entry(self, i: int, m: Dict[str, Any]) -> None:
        entry = m["id"]
        base = f"/models/{i}"
        paths: Dict[str, Optional[Path]] = {}
        for name in _PATH_FIELDS:
            if name in m:
                paths[name] = self.jailed(entry, f"{base}/{name}", m[name])

        onnx = paths.get("onnx")
        if onnx is not None:
            self.check_hash("sha256_mismatch", entry, f"{base}/sha256", onnx, m["sha256"], "model")
            if m.get("quant_mode", DEFAULT_QUANT_MODE) != "fp32":
                self.check_int8(entry, base, m, onnx)
                self.check_fixture(entry, base, onnx)
            self.check_sidecar(entry, base, m, layout.sidecar_path_for(onnx))

        calib = paths.get("quant_calibration_set")
        if calib is not None and not calib.is_file():
            self.add("file_missing", entry, f"{base}/quant_calibration_set", f"calibration set {calib} does not exist")
        # sigstore_bundle files are produced at release time; only their path is checked.

    def check_int8(self, entry: str, base: str, m: Dict[str, Any], onnx: Path) -> None:
        int8 = layout.int8_path_for(onnx)
        self.check_hash("int8_sha256_mismatch", entry, f"{base}/int8_sha256", int8, m["int8_sha256"], "int8 model")
        if not int8.is_file():
            return
        if onnx.is_file() and int8.stat().st_size >= onnx.stat().st_size:
            self.add(
                "int8_not_smaller",
                entry,
                f"{base}/quant_mode",
                f"int8 model {int8.name} ({int8.stat().st_size} B) is not smaller than {onnx.name} ({onnx.stat().st_size} B)",
            )
        if _int8_weight_elements(int8) == 0:
            self.add("int8_nothing_quantised", entry, f"{base}/quant_mode", f"int8 model {int8.name} quantises no weight")

    def check_fixture(self, entry: str, base: str, onnx: Path) -> None:
        """A quantised entry needs fixtures/<id>.soak.npz, fitting the model: the gate judges on it."""
        from tinyq.model import calibration

        fixture = layout.fixture_path(self.path.parent, entry)
        problem = file_problem(fixture)
        if problem == "file not found":
            self.add("fixture_missing", entry, base, f"soak fixture {fixture} does not exist")
            return
        if problem:
            self.add("fixture_invalid", entry, base, f"soak fixture {fixture} {problem}")
            return
        if not onnx.is_file() or not self.read_held_out:
            return
        try:
            calibration.load_npz(fixture, calibration.graph_inputs(onnx), (calibration.TARGET_KEY,))
        except calibration.CalibrationError as e:
            self.add("fixture_invalid", entry, base, f"soak fixture {fixture}: {'; '.join(e.problems)}")
        except TooLarge as e:
            self.add("fixture_invalid", entry, base, str(e))
        except Exception as e:  # an fp32 file onnx cannot parse is reported by its hash check
            self.add("fixture_invalid", entry, base, f"soak fixture {fixture} cannot be checked against {onnx.name}: {e}")

    def check_sidecar(self, entry: str, base: str, m: Dict[str, Any], sidecar: Path) -> None:
        from tinyq.registry import sidecar as sidecars  # not at the top: sidecar.py reads the registry's defaults

        problem = file_problem(sidecar)
        if problem:
            code = "sidecar_missing" if problem == "file not found" else "sidecar_invalid"
            self.add(code, entry, base, f"sidecar {sidecar} " + ("does not exist" if code == "sidecar_missing" else problem))
            return
        try:  # exactly what the C++ parser accepts, so validation never passes what native code refuses
            _, data = sidecars.read_doc(sidecar)
        except sidecars.SidecarError as e:
            self.add("sidecar_invalid", entry, base, f"[{e.code}] {e}")
            return
        errors = list(_validator(SIDECAR_SCHEMA_PATH).iter_errors(data))
        for err in errors:
            self.add("sidecar_invalid", entry, _pointer(err.absolute_path), f"sidecar {sidecar}: {err.message}")
        if errors:
            return
        for name, default in _SHARED_FIELDS:
            got = data.get(name, data.get("onnx_opset") if name == "opset" else None)
            if got is None:
                continue  # a field the sidecar leaves out (reference sidecars often do) is not a disagreement
            want = m.get(name, default)
            if name == "opset" and want is None:
                continue
            if name == "kind":
                got = REFERENCE_KINDS.get(got, got)  # a reference sidecar may name a finer kind of the same model
            if want != got:
                self.add(
                    "sidecar_mismatch",
                    entry,
                    f"{base}/{name}",
                    f"sidecar {sidecar.name} has {name}={json.dumps(data.get(name, got))}, the registry has {json.dumps(want)}",
                )
        onnx = data.get("onnx")
        if onnx is not None and onnx not in (m["onnx"], PurePosixPath(m["onnx"]).name):
            self.add(
                "sidecar_mismatch", entry, f"{base}/onnx", f"sidecar {sidecar.name} names onnx {onnx!r}, the registry {m['onnx']!r}"
            )


def _int8_weight_elements(path: Path) -> int:
    """The int8 weight elements of an ONNX file (tinyq.model.weights); -1 when onnx cannot parse it."""
    import onnx

    from tinyq.model import weights

    try:
        return weights.int8_weight_elements(onnx.load(str(path), load_external_data=False))
    except Exception:  # a file onnx cannot parse fails its hash check or the gate, with their own messages
        return -1


def _entry_from(root: Path, m: Dict[str, Any]) -> ModelEntry:
    calib = m.get("quant_calibration_set")
    return ModelEntry(
        id=m["id"],
        kind=m["kind"],
        onnx=root / m["onnx"],
        sha256=m["sha256"],
        quant_mode=m.get("quant_mode", DEFAULT_QUANT_MODE),
        int8_sha256=m.get("int8_sha256"),
        calibration_set=root / calib if calib else None,
        budget_plcc=float(m.get("quant_accuracy_budget_plcc", DEFAULT_BUDGET_PLCC)),
        opset=m.get("opset"),
        raw=m,
    )


def check(path: Path, read_held_out: bool = True) -> Tuple[Optional[Registry], List[Finding]]:
    """Validates the registry at path, under its directory's shared lock (an interrupted update
    there is finished first, so what is read is the old state or the new one, never a mix).

    Returns (registry, findings): the registry is None when the file is not valid JSON or fails
    its schema. Raises RegistryReadError when the file cannot be read. read_held_out=False checks
    that each soak fixture exists without opening it: for tools that make choices (ptq_auto),
    which must never read the held-out data.
    """
    from tinyq.io import locks, transaction

    path = Path(transaction.real_target(path))  # a symlinked registry: its files lie beside its target
    try:
        with transaction.locked(path.parent, shared=True, sweep_subdirectories=read_held_out):
            return _check(path, read_held_out)
    except locks.LockTimeout as e:
        raise RegistryReadError(str(e)) from None


def _check_structure(c: _Checker) -> Optional[set]:
    """What the registry's JSON alone decides (schema, ids, the files it names or implies and where
    they resolve); the indices of entries with schema problems, None when there is no models list."""
    bad = c.check_schema()
    if not isinstance(c.data, dict) or not isinstance(c.data.get("models"), list):
        return None
    c.check_unique_ids()
    root, models = c.path.parent, c.data["models"]
    for i, key, message in layout.files_named_twice(root, models, ID_PATTERN.fullmatch):
        c.add("file_named_twice", c.entry_name(i), _pointer(["models", i, key]), message)
    for i, key, message in layout.implied_escapes(root, models):
        c.add("path_escape", "(registry)" if i is None else c.entry_name(i), _pointer(["models", i, key] if key else []), message)
    return bad


def structure_findings(path: Path, data: Any) -> List[Finding]:
    """The findings registry data written at path would have from its JSON alone: what a writer
    checks before it writes (validate, then write)."""
    c = _Checker(Path(path), data)
    _check_structure(c)
    return c.findings


def _check(path: Path, read_held_out: bool) -> Tuple[Optional[Registry], List[Finding]]:
    try:
        raw = read_regular(path, MAX_JSON_BYTES)
    except FileNotFoundError:
        raise RegistryReadError(f"{path}: registry not found; pass the path of a registry.json") from None
    except OSError as e:
        raise RegistryReadError(f"{path}: cannot read the registry: {e.strerror}") from None
    data, findings = parse_registry(raw)
    if findings:
        return None, findings
    c = _Checker(path, data, read_held_out)
    bad = _check_structure(c)
    if bad is None:
        return None, c.findings
    for i, key, message in heldout.reuse_findings(path.parent, data["models"], ID_PATTERN.fullmatch, read_held_out):
        c.add("held_out_reused", c.entry_name(i), _pointer(["models", i, key]), message)
    for i, m in enumerate(data["models"]):
        if i not in bad:
            c.check_entry(i, m)
    if bad:
        return None, c.findings
    models = tuple(_entry_from(path.parent, m) for m in data["models"])
    return Registry(path=path, data=data, models=models), c.findings


def load(path: Path, read_held_out: bool = True, strict: bool = False) -> Registry:
    """The validated registry; raises RegistryInvalid listing every finding when any is an error
    (any at all when strict). Warnings alone leave it usable."""
    registry, findings = check(path, read_held_out)
    if errors(findings, strict) or registry is None:
        raise RegistryInvalid(Path(path), findings)
    return registry
