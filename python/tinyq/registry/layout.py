"""The files and folders a registry implies: each model's int8 artefact and sidecar, named after
its fp32 model, and where its data sets live, beside registry.json.

  calibration/<id>.npz        train-split inputs, what static PTQ calibrates on;
  validation/<id>.val.npz     val-split inputs with targets, what quantisation choices are made on;
  fixtures/<id>.soak.npz      held-out inputs with targets, what the gate judges on (never chosen on);
  shift/<id>.shift.npz        val-split inputs under stronger degradations (tinyq.zoo.shift).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple


def calibration_path(model_dir: Path, model_id: str) -> Path:
    return Path(model_dir) / "calibration" / f"{model_id}.npz"


def validation_path(model_dir: Path, model_id: str) -> Path:
    """Real held-out data from the val split, with targets: what quantisation choices are made on."""
    return Path(model_dir) / "validation" / f"{model_id}.val.npz"


def fixture_path(model_dir: Path, model_id: str) -> Path:
    return Path(model_dir) / "fixtures" / f"{model_id}.soak.npz"


def shift_path(model_dir: Path, model_id: str) -> Path:
    """Val-split inputs under degradations stronger than the corpus holds (tinyq.zoo.shift); inputs only."""
    return Path(model_dir) / "shift" / f"{model_id}.shift.npz"


def int8_path_for(onnx: Path) -> Path:
    """<basename>.int8.onnx beside the fp32 model."""
    return onnx.with_name(onnx.name[: -len(".onnx")] + ".int8.onnx")


def sidecar_path_for(onnx: Path) -> Path:
    """<basename>.json beside the model."""
    return onnx.with_name(onnx.name[: -len(".onnx")] + ".json")


def entry_files(root: Path, m: Mapping[str, Any], mid: Optional[str]) -> List[Tuple[str, Path, str]]:
    """(field, file, what it is) for every file one registry entry names or implies: its fp32 model,
    sidecar and (quantised) pinned int8 artefact, its calibration set and signature bundle, and
    the data sets its id implies that exist. mid: the entry's id, None when it is not a valid one."""
    out: List[Tuple[str, Path, str]] = []
    onnx = m.get("onnx")
    if isinstance(onnx, str):
        fp32 = root / onnx
        out.append(("onnx", fp32, "fp32 model"))
        if onnx.endswith(".onnx"):
            out.append(("onnx", sidecar_path_for(fp32), "sidecar"))
            if m.get("int8_sha256") or m.get("quant_mode") not in (None, "fp32"):
                out.append(("onnx", int8_path_for(fp32), "pinned int8 artefact"))
    for field, what in (("quant_calibration_set", "calibration set"), ("sigstore_bundle", "signature bundle")):
        if isinstance(m.get(field), str):
            out.append((field, root / m[field], what))
    if mid:
        implied = (("calibration set", calibration_path), ("soak fixture", fixture_path),
                   ("validation set", validation_path), ("shift set", shift_path))
        out += [("id", where(root, mid), what) for what, where in implied if where(root, mid).exists()]
    return out


def _identity(path: Path) -> str:
    """One key per file: its real path when it exists (two names for one file are one file)."""
    return os.path.realpath(path) if os.path.lexists(path) else os.path.normpath(path)


def files_named_twice(root: Path, models: Sequence[Any], valid_id: Callable[[str], bool]) -> List[Tuple[int, str, str]]:
    """(entry index, field, message) for each file that a second entry, or a second role of one
    entry, names again: pinning one entry's int8 would replace another's model."""
    seen: Dict[str, Tuple[int, str]] = {}
    found = []
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            continue
        mid = m["id"] if isinstance(m.get("id"), str) and valid_id(m["id"]) else None
        for field, path, what in entry_files(root, m, mid):
            role = f"the {what} of {mid or f'models[{i}]'!r}"
            first = seen.setdefault(_identity(path), (i, role))
            if first[1] != role:
                found.append((i, field, f"{path} is {role} and also {first[1]}"))
    return found


FOLDERS = ("calibration", "validation", "fixtures", "shift")


def outside(root_real: str, path: Path) -> Optional[str]:
    """Where path really leads (a missing file: through its folders), when that leaves root_real."""
    real = os.path.realpath(path)
    return None if real == root_real or real.startswith(root_real + os.sep) else real


def implied_escapes(root: Path, models: Sequence[Any]) -> List[Tuple[Optional[int], str, str]]:
    """(entry index or None, field, message) for each path a registry implies that leads out of its
    directory: a data folder, or an entry's sidecar or int8 artefact, through a symlink. The paths
    entries name are jailed by the registry's own check; these are written by tinyq too."""
    root_real = os.path.realpath(root)
    found: List[Tuple[Optional[int], str, str]] = []
    for folder in FOLDERS:
        real = outside(root_real, root / folder)
        if real and os.path.lexists(root / folder):
            found.append((None, "", f"the folder {folder}/ leads to {real}, outside {root_real}"))
    for i, m in enumerate(models):
        onnx = m.get("onnx") if isinstance(m, dict) else None
        if not isinstance(onnx, str) or not onnx.endswith(".onnx") or outside(root_real, root / onnx):
            continue  # a model path that leaves is the registry's own path_escape
        for what, path in (("sidecar", sidecar_path_for(root / onnx)), ("int8 artefact", int8_path_for(root / onnx))):
            real = outside(root_real, path)
            if real:
                found.append((i, "onnx", f"its {what} {path.name} leads to {real}, outside {root_real}"))
    return found
