"""Registers a model of your own: sidecar, hashes, registry entry and real-data fixtures, then validates.

Usage: bazel run //python:register_model -- path/model.onnx --kind fr|nr|filter|classifier|regressor|shot_detector
           [--registry R] [--id ID] [--input-semantics NAME=TEXT]... [--calibration-data C.npz]
           [--validation-data V.npz] [--soak-data S.npz] [--budget B] [--recipe R.recipe.json] [--residual-of [OUTPUT=]INPUT] [--quant-mode fp32|dynamic|static|qat] [--int8 P]
           [--description D] [--license L] [--license-url U] [--notes N]

The registry defaults to model/tiny/registry.json in the workspace; one that does not exist yet is
created. A model outside the registry's directory, or one with external data (torch's exporter
writes <name>.onnx.data), is copied in as one self-contained <id>.onnx; a model already inside it
is registered in place. --calibration-data (inputs from the train split) becomes
calibration/<id>.npz and the entry's quant_calibration_set; --soak-data (held-out inputs plus an
optional `target`) becomes fixtures/<id>.soak.npz, which the gate judges the budget on;
--validation-data (inputs from the val split, optional `target`) becomes validation/<id>.val.npz,
on which `ptq_auto --id <id>` chooses, so that it needs no other flag. All are checked against the
graph first, and fewer samples than tinyq.model.calibration's minimums warn. --kind also takes the reference toolkit's finer kinds (the
sidecar keeps shot_detector, the registry files it as nr).

Run it again with --quant-mode static (or dynamic, qat) after quantising: it pins
<basename>.int8.onnx (or --int8 P, copied in beside the model) by its sha256 in the registry and
the sidecar. --recipe R.json (ptq_auto's) pins it with the recipe's quant_mode, quant_encoding and
quant_purpose (speed or size), after checking the file is the artefact the recipe describes. Every
file is written atomically and all of them or none; no registered fp32 model and
no input is ever overwritten. The registry is validated last.
Exit codes: 0 registered and the registry valid; 1 registered but the registry has findings
(printed, with fixes); 2 bad input or flags, nothing written; 3 the int8 file is not smaller than
the fp32 model, nothing written; 4 the int8 file quantises no weight, nothing written.
"""

import hashlib
import os
import sys
from pathlib import Path, PurePosixPath

import onnx
from absl import flags

from tinyq.app import cli
from tinyq.io import transaction
from tinyq.io.fileio import atomic_write_all, dumps_json, npz_bytes, read_regular, sha256_file
from tinyq.judge import drops
from tinyq.model import calibration, compaction, loading, weights
from tinyq.quant import quantize
from tinyq.registry import defaults, heldout, layout, registry, sidecar

_KIND = flags.DEFINE_enum("kind", None, sorted(registry.REFERENCE_KINDS), "The model's kind (required for a new entry).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry to add the model to (default: model/tiny/registry.json).")
_ID = flags.DEFINE_string("id", None, "Registry id (default: the model file's name without .onnx).")
_SEMANTICS = flags.DEFINE_multi_string("input-semantics", [], "NAME=TEXT: what ONNX input NAME holds, e.g. 'image=luma in [0, 1]'.")
_CALIBRATION = flags.DEFINE_string("calibration-data", None, "Real inputs for static calibration: one [N, ...] array per ONNX input.")
_VALIDATION = flags.DEFINE_string("validation-data", None, "Real inputs from the val split (plus an optional 'target') "
                                  "that ptq_auto --id chooses on; becomes validation/<id>.val.npz.")
_SOAK = flags.DEFINE_string("soak-data", None, "Held-out real inputs (one array per ONNX input) plus an optional 'target'.")
_BUDGET = flags.DEFINE_float("budget", None, "quant_accuracy_budget_plcc (default 0.01).", lower_bound=0, upper_bound=1)
_MODE = flags.DEFINE_enum("quant-mode", None, list(registry.QUANT_MODES), "quant_mode (default: the entry's, fp32 for a new one).")
_RESIDUAL_OF = flags.DEFINE_multi_string("residual-of", [], "residual_of: INPUT (the first output restores it) or "
                                         "OUTPUT=INPUT, an output the gate judges on its residual (output - input); "
                                         "a filter with one input needs none.")
_RECIPE = flags.DEFINE_string("recipe", None, "ptq_auto's recipe JSON (<output>.recipe.json beside `ptq_auto --output`, or "
                              "--recipe-out): pins its artefact with the recipe's quant_mode, quant_encoding and "
                              "quant_purpose, and refuses an int8 file that is not the one the recipe describes.")
_INT8 = flags.DEFINE_string("int8", None, "The int8 artefact to pin (default: <basename>.int8.onnx beside the registered model).")
_TEXT = {
    name: flags.DEFINE_string(name.replace("_", "-"), None, f"The entry's {name}.")
    for name in ("description", "license", "license_url", "notes")
}

EXIT_LARGER = quantize.EXIT_LARGER
EXIT_NOTHING_QUANTISED = quantize.EXIT_NOTHING_QUANTISED


class Refused(Exception):
    """The int8 file cannot be pinned; .code is the exit code."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)
cli.finite(_BUDGET)


def _load_registry(path):
    if not path.exists():
        return {"$schema": "./registry.schema.json", "models": [], "schema_version": 1}
    try:
        data = registry.read_json(path)
    except (OSError, ValueError) as e:
        raise cli.UsageError(f"{path}: cannot read the registry ({e}); fix it first (//python:validate_registry)") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise cli.UsageError(f"{path}: not a registry (no 'models' list); fix it first (//python:validate_registry)")
    return data


def _load_model(src):
    """The model with any external data inlined; bad input is a UsageError naming the file."""
    try:
        model, _ = loading.load_model(src)
    except quantize.QuantizeError as e:
        raise cli.UsageError(str(e)) from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises ValidationError, and plain errors from its C++ checker
        raise cli.UsageError(f"{src}: not a valid ONNX model ({type(e).__name__}: {e}); export it again") from None
    if weights.is_quantised(model):
        raise cli.UsageError(f"{src}: already quantised; register the fp32 model, then pin the int8 file with --quant-mode --int8")
    return model


def _model_id(src):
    mid = _ID.value or (src.name[: -len(".onnx")] if src.name.endswith(".onnx") else src.stem)
    if not registry.ID_PATTERN.fullmatch(mid):
        raise cli.UsageError(f"id {mid!r} is not a registry id (lowercase letters, digits, '_' and '-', at most 64): pass --id")
    return mid


def _exporter_metadata(model) -> int:
    """How many doc strings and metadata_props entries the model's graph and nodes carry."""
    nodes = list(model.graph.node)
    return (sum(bool(n.doc_string) + len(n.metadata_props) for n in nodes) + len(model.metadata_props)
            + bool(model.doc_string) + bool(model.graph.doc_string))


def _placement(src, model, reg_dir, mid):
    """(path relative to the registry, bytes to write or None to keep the file as it is).

    A self-contained model inside the registry's directory stays where it is; any other is
    written as <id>.onnx with its external data inlined and without the exporter's environment (doc
    strings and metadata_props: torch's dynamo exporter writes stack traces with local source paths
    there), never over a different file."""
    own = calibration.read_model(src)
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in own.graph.initializer)
    if src.resolve().is_relative_to(reg_dir.resolve()) and not external:
        carried = _exporter_metadata(own)
        if carried:
            print(f"WARNING: {src} is registered in place with the exporter's metadata ({carried} doc "
                  f"strings and metadata entries, which may hold local paths); register it from outside the registry's "
                  f"directory to have them stripped", file=sys.stderr)
        return PurePosixPath(src.resolve().relative_to(reg_dir.resolve())).as_posix(), None
    clean = onnx.ModelProto.FromString(model.SerializeToString())
    if _exporter_metadata(clean):  # a model without any keeps its bytes
        compaction.strip_metadata(clean)
    data = clean.SerializeToString()
    dest = reg_dir / f"{mid}.onnx"
    if dest.exists() and _read_model_bytes(dest, "--id") != data:
        raise cli.UsageError(f"{dest} exists and holds another model; tinyq never overwrites it: remove it first, or pass "
                             f"another --id")
    return f"{mid}.onnx", None if dest.exists() else data


def _fixture(flag, value, dest, inputs, keep_target):
    """(source, dest, npz bytes) for a real-data .npz checked against the graph, or None when not given."""
    if not value:
        return None
    src = cli.resolve_user_path(value)
    try:
        arrays = calibration.load_npz(src, inputs, (calibration.TARGET_KEY,))
    except calibration.CalibrationError as e:
        raise cli.UsageError(f"{flag}: {e}") from None
    if not keep_target:
        arrays.pop(calibration.TARGET_KEY, None)
    minimum = calibration.MIN_VALIDATION_SAMPLES if keep_target else calibration.MIN_CALIBRATION_SAMPLES
    warning = calibration.tiny_data_warning(flag, src, arrays, minimum)
    if warning:
        print(warning, file=sys.stderr)
    return src, dest, npz_bytes(arrays)


def _semantics(model_inputs):
    out = {}
    names = [i["name"] for i in model_inputs]
    for item in _SEMANTICS.value:
        name, sep, text = item.partition("=")
        if not sep or not text:
            raise cli.UsageError(f"--input-semantics {item!r}: expected NAME=TEXT, e.g. {names[0]}='luma in [0, 1]'")
        if name not in names:
            raise cli.UsageError(f"--input-semantics {item!r}: the model has no input {name!r} (inputs: {names})")
        out[name] = text
    return out


def _read_model_bytes(path: Path, flag: str) -> bytes:
    """A model file's bytes, read only when it is a regular file within the model cap (a FIFO would
    block under the registry's lock; a 1 TiB sparse file is refused by its size)."""
    try:
        calibration.check_model_file(path)
        return read_regular(path, calibration.MAX_MODEL_BYTES)
    except calibration.ModelFileError as e:
        raise cli.UsageError(f"{flag}: {e}") from None
    except OSError as e:
        raise cli.UsageError(f"{flag}: {path}: {e.strerror}") from None


def _int8(fp32_path, fp32_size, mode):
    """(source path, dest path, bytes) of the int8 artefact to pin; Refused when it cannot be."""
    dest = layout.int8_path_for(fp32_path)
    src = cli.resolve_user_path(_INT8.value) if _INT8.value else dest
    if not src.is_file():
        raise cli.UsageError(f"--quant-mode {mode}: no int8 file {src}; quantise first (//python:ptq_static or "
                             f"//python:ptq_dynamic), or pass --int8 P")
    data = _read_model_bytes(src, "--int8")
    try:
        n = weights.int8_weight_elements(onnx.load_from_string(data))
    except Exception as e:
        raise cli.UsageError(f"{src}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if n == 0:
        raise Refused(EXIT_NOTHING_QUANTISED, f"{src} quantises no weight, so it is not an int8 model; quantise the fp32 model "
                                              f"with //python:ptq_static or //python:ptq_dynamic")
    if len(data) >= fp32_size:
        raise Refused(EXIT_LARGER, f"{src} ({len(data)} B) is not smaller than the fp32 model ({fp32_size} B); tinyq does not "
                                   f"register it: try `ptq_dynamic --encoding=weight_only`, or keep the model fp32")
    return src, dest, data


def _recipe():
    """ptq_auto's recipe from --recipe, checked: (mode, {quant_encoding, quant_purpose}, int8 sha256 or None)."""
    path = cli.resolve_user_path(_RECIPE.value)
    try:
        rec = registry.read_json(path)
    except (OSError, ValueError) as e:
        raise cli.UsageError(f"--recipe {path}: not a readable JSON recipe ({e}); pass the .recipe.json ptq_auto wrote") from None
    if not isinstance(rec, dict) or rec.get("mode") not in registry.QUANT_MODES:
        raise cli.UsageError(f"--recipe {path}: field 'mode' must be one of {', '.join(registry.QUANT_MODES)}; pass the "
                             f".recipe.json ptq_auto wrote")
    if _MODE.value and _MODE.value != rec["mode"]:
        raise cli.UsageError(f"--quant-mode {_MODE.value} contradicts --recipe {path} (mode {rec['mode']}): drop --quant-mode")
    fields = {} if rec["mode"] == "fp32" else {"quant_encoding": rec.get("encoding"), "quant_purpose": rec.get("purpose")}
    missing = [k for k, v in fields.items() if not isinstance(v, str)]
    if missing:
        raise cli.UsageError(f"--recipe {path}: no {' or '.join(m.removeprefix('quant_') for m in missing)} field; pass the "
                             f".recipe.json ptq_auto wrote")
    return rec["mode"], fields, rec.get("int8_sha256")


def _entry(prev, mid, kind, rel, sha, model, mode, int8_sha, calib_rel, described=None):
    """The registry entry. described: the recipe's quant_encoding and quant_purpose; without one, the
    previous entry's are kept only while it pins the same int8 artefact."""
    same_int8 = int8_sha is not None and prev.get("int8_sha256") == int8_sha
    dropped = ("int8_sha256", "quant_calibration_set", "opset") + (() if same_int8 else ("quant_encoding", "quant_purpose"))
    entry = {k: v for k, v in prev.items() if k not in dropped}
    entry.update(described or {})
    entry.update(id=mid, kind=registry.REFERENCE_KINDS[kind], onnx=rel, sha256=sha, quant_mode=mode)
    opset = loading.model_opset(model)
    if registry.MIN_OPSET <= opset <= registry.MAX_OPSET:
        entry["opset"] = opset
    if int8_sha:
        entry["int8_sha256"] = int8_sha
    if calib_rel:
        entry["quant_calibration_set"] = calib_rel
    if _BUDGET.value is not None:
        entry["quant_accuracy_budget_plcc"] = _BUDGET.value
    residual = _residual_of(model, entry["kind"])
    if residual is not None:
        entry["residual_of"] = residual
    entry.update({k: f.value for k, f in _TEXT.items() if f.value is not None})
    return entry


def _residual_of(model, kind):
    """--residual-of, checked against the graph's inputs and outputs."""
    try:
        value = drops.parse_residual_flags(_RESIDUAL_OF.value)
        drops.declared_residuals(value, kind, model)
    except ValueError as e:
        raise cli.UsageError(f"--residual-of: {e}") from None
    return value


def _sidecar(path, entry, model):
    """The sidecar: graph names and shapes, the entry's shared fields, and whatever else an existing
    sidecar at path already says (training notes, features, ...)."""
    inputs, outputs = sidecar.graph_io(model)
    try:
        old = registry.read_json(path) if path.is_file() else {}
    except ValueError as e:
        raise cli.UsageError(f"{path}: the existing sidecar is not valid JSON ({e}); fix or remove it") from None
    except OSError as e:
        raise cli.UsageError(f"{path}: cannot read the existing sidecar: {e.strerror}; fix or remove it") from None
    if not isinstance(old, dict):
        raise cli.UsageError(f"{path}: the existing sidecar is a JSON {type(old).__name__}, not an object; fix or remove it")
    if not isinstance(old.get("input_semantics", {}), dict):
        raise cli.UsageError(f"{path}: the existing sidecar's input_semantics is a JSON {type(old['input_semantics']).__name__}, "
                             f"not an object of input name -> meaning; fix or remove the field")
    semantics = {**old.get("input_semantics", {}), **_semantics(inputs)}
    side = {**old, **sidecar.build(entry, inputs=inputs, outputs=outputs, arch=None, n_params=sidecar.n_params(model),
                                   notes=entry.get("notes"), input_semantics=semantics)}
    side["kind"] = _KIND.value or old.get("kind") or entry["kind"]  # a finer reference kind stays in the sidecar
    if "int8_sha256" not in entry:
        side.pop("int8_sha256", None)
    return side


class Plan:
    """What one registration writes: [(input it comes from or None, destination, bytes)], and the entry."""

    def __init__(self, src, reg_path, data):
        self.reg_dir = reg_path.parent
        self.model = _load_model(src)
        self.mid = _model_id(src)
        self.prev = next((m for m in data["models"] if isinstance(m, dict) and m.get("id") == self.mid), None) or {}
        self.kind = _KIND.value or self.prev.get("kind")
        if self.kind not in registry.REFERENCE_KINDS:
            raise cli.UsageError(f"--kind is required for a new model: one of {', '.join(sorted(registry.REFERENCE_KINDS))}")
        self.rel, model_bytes = _placement(src, self.model, self.reg_dir, self.mid)
        self.fp32 = self.reg_dir / self.rel
        self.files = [(src, self.fp32, model_bytes)] if model_bytes is not None else []
        self.sha = hashlib.sha256(model_bytes).hexdigest() if model_bytes is not None else sha256_file(self.fp32)
        self.fp32_size = len(model_bytes) if model_bytes is not None else loading.model_bytes_on_disk(self.fp32)
        self._fixtures(data)
        recipe_mode, described, recipe_sha = _recipe() if _RECIPE.value else (None, None, None)
        self.mode = recipe_mode or _MODE.value or self.prev.get("quant_mode", defaults.DEFAULT_QUANT_MODE)
        self.int8_sha = self._int8() if self.mode != "fp32" else None
        if recipe_sha and self.int8_sha != recipe_sha:
            raise cli.UsageError(f"the int8 file to pin (sha256 {self.int8_sha}) is not the artefact --recipe describes "
                                 f"(int8_sha256 {recipe_sha}): pass the file ptq_auto wrote with it (--int8 P)")
        self.entry = _entry(self.prev, self.mid, self.kind, self.rel, self.sha, self.model, self.mode, self.int8_sha,
                            self.calib_rel, described)
        side = layout.sidecar_path_for(self.fp32)
        self.files.append((None, side, dumps_json(_sidecar(side, self.entry, self.model)).encode()))

    def _fixtures(self, data):
        self._refuse_held_out(data)
        inputs = calibration.graph_inputs(self.model)
        calib_path, soak_path = layout.calibration_path(self.reg_dir, self.mid), layout.fixture_path(self.reg_dir, self.mid)
        calib = _fixture("--calibration-data", _CALIBRATION.value, calib_path, inputs, keep_target=False)
        soak = _fixture("--soak-data", _SOAK.value, soak_path, inputs, keep_target=True)
        val = _fixture("--validation-data", _VALIDATION.value, layout.validation_path(self.reg_dir, self.mid), inputs,
                       keep_target=True)
        self.files += [f for f in (calib, soak, val) if f is not None]
        self.calib_rel = f"calibration/{self.mid}.npz" if calib or calib_path.is_file() else None
        self.has_soak = bool(soak) or soak_path.is_file()

    def _refuse_held_out(self, data):
        """No choice set (--calibration-data, --validation-data) may be held-out data: the --soak-data
        given, or a soak fixture of the registry; the same file, a link to it, or its bytes."""
        fixtures = heldout.soak_fixtures(self.reg_dir, data["models"], registry.ID_PATTERN.fullmatch)
        if _SOAK.value and cli.resolve_user_path(_SOAK.value).is_file():
            fixtures.append(cli.resolve_user_path(_SOAK.value))
        hashes = {f: sha256_file(f) for f in fixtures}
        for flag, value in (("--calibration-data", _CALIBRATION.value), ("--validation-data", _VALIDATION.value)):
            fixture = heldout.reused_fixture(cli.resolve_user_path(value), fixtures, hashes) if value else None
            if fixture is not None:
                raise cli.UsageError(f"{flag} {value} is the held-out set {fixture} (the same file, a link to it, or its "
                                     f"bytes): the gate judges on held-out data, so no choice may be made on it; pass "
                                     f"train-split (calibration) or val-split (validation) data")

    def _int8(self):
        if self.mode == "static" and not self.calib_rel:
            raise cli.UsageError("--quant-mode static needs its calibration set: pass --calibration-data C.npz")
        if not self.has_soak:
            raise cli.UsageError(f"--quant-mode {self.mode}: the gate judges a quantised model on real held-out data: "
                                 f"pass --soak-data S.npz")
        src, dest, data = _int8(self.fp32, self.fp32_size, self.mode)
        self.files.append((src, dest, data))
        return hashlib.sha256(data).hexdigest()


def _refuse_new_findings(reg_path, data, new_data):
    """Validate, then write: a registration that would add an error to the registry's JSON (an
    entry the schema refuses, a file two entries name, a path leaving the registry) writes nothing."""
    key = lambda f: (f.code, f.entry, f.pointer)  # noqa: E731
    before = {key(f) for f in registry.structure_findings(reg_path, data)}
    added = [f for f in registry.errors(registry.structure_findings(reg_path, new_data)) if key(f) not in before]
    for f in added:
        print(f.format(reg_path), file=sys.stderr)
    if added:
        raise cli.UsageError(f"{reg_path}: this registration would add {len(added)} finding(s), printed above; "
                             f"nothing was written")


def _write(plan, reg_path, data):
    """Writes every planned file and the registry, all or none; returns the files written."""
    index = next((i for i, m in enumerate(data["models"]) if isinstance(m, dict) and m.get("id") == plan.mid), None)
    models = list(data["models"])
    if index is None:
        models.append(plan.entry)
    else:
        models[index] = plan.entry
    new_data = {**data, "models": models}
    _refuse_new_findings(reg_path, data, new_data)
    todo = [(src, dest, payload) for src, dest, payload in plan.files if src is None or not cli.same_file(src, dest)]
    root_real = os.path.realpath(reg_path.parent)
    for _, dest, _ in todo:  # a fixtures/ or a sidecar symlinked out of the registry is never written through
        real = layout.outside(root_real, dest)
        if real:
            raise cli.UnsafeOutput(f"{dest} leads to {real}, outside the registry's directory {root_real}: tinyq writes a "
                                   f"registry's files only inside it; replace the symlink with a folder or file there")
    for _, dest, _ in todo:
        dest.parent.mkdir(parents=True, exist_ok=True)  # calibration/ and fixtures/ in a new registry
    cli.guard_outputs({str(dest): dest for _, dest, _ in todo}, [src for src, _, _ in todo if src is not None], reg_path,
                      pinning=True)
    atomic_write_all([(dest, payload) for _, dest, payload in todo] + [(reg_path, dumps_json(new_data).encode())])
    return [dest for _, dest, _ in todo]


def main(argv):
    if len(argv) != 2:
        raise cli.UsageError("expected exactly one model path")
    src = cli.resolve_user_path(argv[1])
    reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    if not reg_path.parent.is_dir():
        raise cli.UsageError(f"--registry {reg_path}: the directory {reg_path.parent} does not exist; create it first")
    reg_path = Path(transaction.real_target(reg_path))  # a symlinked registry is written through to its target
    with transaction.locked(reg_path.parent):  # one writer: read, plan, write, check (LockTimeout: exit 11)
        return _register(src, reg_path)


def _register(src, reg_path):
    data = _load_registry(reg_path)
    try:
        plan = Plan(src, reg_path, data)
    except Refused as e:
        print(f"register_model: error: {e}; nothing was written", file=sys.stderr)
        return e.code
    written = _write(plan, reg_path, data)
    entry = plan.entry
    if entry["quant_mode"] != "fp32" and "quant_purpose" not in entry:
        print(f"WARNING: {entry['id']} is pinned without quant_encoding and quant_purpose (what the artefact is and "
              f"whether it is for speed or size): pin ptq_auto's artefact with --recipe R.recipe.json to record both",
              file=sys.stderr)
    for path in written:
        print(f"register_model: {entry['id']}: wrote {path}")
    print(f"register_model: {entry['id']}: {entry['kind']}, quant_mode {entry['quant_mode']}, sha256 {entry['sha256']}"
          + (f", int8_sha256 {entry['int8_sha256']}" if "int8_sha256" in entry else "") + f", in {reg_path}")
    _, findings = registry.check(reg_path)
    for f in findings:
        print(f.format(reg_path), file=sys.stderr)
    if registry.errors(findings):
        print(f"INVALID: {reg_path}: {len(registry.errors(findings))} findings", file=sys.stderr)
        return cli.EXIT_FAIL
    print(f"OK: {reg_path} is valid")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
