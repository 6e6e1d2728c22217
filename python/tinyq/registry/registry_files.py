"""The files a registry names, read leniently so that even an invalid registry protects them, and
the one registry write that is not a tool's transaction (train_model's upsert)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from tinyq.registry import layout, registry


def _entry_files(root: Path, i: int, m: Dict[str, Any]) -> Dict[Path, str]:
    mid = str(m.get("id", f"models[{i}]"))
    files: Dict[Path, str] = {}
    if isinstance(m.get("onnx"), str) and m["onnx"].endswith(".onnx"):
        fp32 = root / m["onnx"]
        files[fp32] = f"the fp32 model of {mid!r}"
        files[layout.sidecar_path_for(fp32)] = f"the sidecar of {mid!r}"
        if m.get("int8_sha256") or m.get("quant_mode") not in (None, "fp32"):
            files[layout.int8_path_for(fp32)] = f"the pinned int8 artefact of {mid!r}"
    elif isinstance(m.get("onnx"), str):
        files[root / m["onnx"]] = f"the fp32 model of {mid!r}"
    for field in ("quant_calibration_set", "sigstore_bundle"):
        if isinstance(m.get(field), str):
            files[root / m[field]] = f"the {field} of {mid!r}"
    if isinstance(m.get("id"), str) and registry.ID_PATTERN.fullmatch(m["id"]):
        implied = {layout.calibration_path(root, mid): "calibration set", layout.fixture_path(root, mid): "soak fixture",
                   layout.validation_path(root, mid): "validation set", layout.shift_path(root, mid): "shift set"}
        files.update({p: f"the {what} of {mid!r}" for p, what in implied.items() if p.exists()})
    return files


def named_files(path: Path) -> Dict[Path, str]:
    """{file: what it is} for the registry at path and every file its entries name or imply (model,
    sidecar, pinned int8, and the calibration, soak, validation and shift sets that exist); {} when it
    cannot be read."""
    path = Path(path)
    try:
        data = registry.read_json(path)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    files = {path: "the registry itself"}
    models = data.get("models") if isinstance(data, dict) else None
    for i, m in enumerate(models if isinstance(models, list) else []):
        if isinstance(m, dict):
            files.update(_entry_files(path.parent, i, m))
    return files


def upsert(path: Path, entry: Dict[str, Any]) -> Dict[str, Any]:
    """Adds or replaces the entry with entry["id"], keeping its quantisation fields; atomic, under
    the registry's lock. Returns the entry as written, in the one tinyq JSON layout."""
    from tinyq.io import transaction
    from tinyq.io.fileio import atomic_write_json

    path = Path(path)
    with transaction.locked(Path(transaction.real_target(path)).parent):
        data = registry.read_json(path) if path.exists() else {"$schema": "./registry.schema.json", "schema_version": 1,
                                                                "models": []}
        models = data.setdefault("models", [])
        for i, m in enumerate(models):
            if m.get("id") == entry["id"]:
                kept = {k: v for k, v in m.items() if k.startswith("quant_") or k == "int8_sha256"}
                models[i] = {**entry, **kept}
                written = models[i]
                break
        else:
            models.append(dict(entry))
            written = models[-1]
        atomic_write_json(path, data)
    return written
