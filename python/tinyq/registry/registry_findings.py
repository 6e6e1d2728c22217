"""What registry validation reports: a Finding per problem, each code's fix, and which codes are
only warnings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

_REGISTER_FIX = "run `tools/bazel run //python:register_model -- MODEL.onnx --registry R --soak-data S.npz` (docs/user-guide.md)"

_FIXES = {
    "malformed_json": "fix the JSON syntax at the position given",
    "missing_field": "add the field; see model/tiny/registry.schema.json",
    "unknown_field": "remove the field or correct its spelling; see model/tiny/registry.schema.json",
    "wrong_type": "give the field the type model/tiny/registry.schema.json declares",
    "bad_value": "correct the value to match model/tiny/registry.schema.json",
    "unknown_quant_mode": "use one of fp32, dynamic, static, qat",
    "int8_sha256_missing": "quantise the model and run `tools/bazel run //model:update_pins`, or set quant_mode to fp32",
    "calibration_set_missing": "add quant_calibration_set pointing at the model's calibration .npz, "
    "or use quant_mode dynamic",
    "duplicate_id": "give each model a unique id",
    "file_named_twice": "give each file one role: rename the model (its int8 artefact and sidecar are named after "
    "it) or point the field at another file",
    "held_out_reused": "choose on real val-split data that is not the soak fixture: register a separate calibration "
    "or validation set (register_model --calibration-data, --validation-data)",
    "duplicate_key": "keep one of the two values and delete the other: JSON readers disagree on which one wins",
    "path_escape": "use a relative path that stays inside the registry's directory, with no '..' and no "
    "symlink leading out",
    "file_missing": "add the file, or correct the path",
    "sha256_mismatch": "if the change to the file is intended, run `tools/bazel run //model:update_pins`; "
    "otherwise restore the file",
    "int8_sha256_mismatch": "rebuild the int8 artefact and run `tools/bazel run //model:update_pins`; "
    "otherwise restore the file",
    "int8_not_smaller": "an int8 artefact must be smaller than its fp32 model; try another encoding "
    "(ptq_dynamic --encoding=weight_only) or keep the model fp32",
    "sidecar_missing": "write the sidecar JSON beside the model (the training target writes it)",
    "sidecar_invalid": "fix the sidecar so it is a JSON object matching model/tiny/sidecar.schema.json",
    "sidecar_mismatch": "make the sidecar agree with the registry entry (the registry is the trust root)",
    "int8_nothing_quantised": "the int8 file has no int8 weight, so it is not an int8 model: quantise the fp32 model "
    "with //python:ptq_dynamic or //python:ptq_static, or set quant_mode to fp32",
    "fixture_missing": "the gate judges a quantised model on its soak fixture: add real held-out data with "
    + _REGISTER_FIX,
    "fixture_invalid": "rewrite the soak fixture so it fits the model: one [N, ...] array per ONNX input, plus an "
    "optional 'target'; " + _REGISTER_FIX,
}


# Findings that leave a registry usable: a reference toolkit's quantised entries have no soak
# fixture, and the gate says so when asked to judge one. `validate_registry --strict` (CI, on the
# project's own registry) and load(strict=True) fail on them too.
WARNING_CODES = frozenset({"fixture_missing"})


@dataclass(frozen=True)
class Finding:
    """One validation problem."""

    code: str
    entry: str  # the model id, "models[i]" when it has none, or "(registry)"
    pointer: str  # JSON pointer into the registry (or the sidecar, for sidecar_* codes)
    message: str
    fix: str

    @property
    def warning(self) -> bool:
        return self.code in WARNING_CODES

    def format(self, registry_path: Path) -> str:
        level = "warning: " if self.warning else ""
        return f"{level}{registry_path}: {self.entry} {self.pointer or '/'}: [{self.code}] {self.message}. Fix: {self.fix}."

    def as_dict(self) -> Dict[str, Any]:
        return {"code": self.code, "entry": self.entry, "pointer": self.pointer, "message": self.message, "fix": self.fix,
                "severity": "warning" if self.warning else "error"}


def errors(findings: List["Finding"], strict: bool = False) -> List["Finding"]:
    """The findings that make a registry invalid: all of them when strict, else all but warnings."""
    return list(findings) if strict else [f for f in findings if not f.warning]
