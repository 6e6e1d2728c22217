"""The files and folders a registry implies: each model's int8 artefact and sidecar, named after
its fp32 model, and where its data sets live, beside registry.json.

  calibration/<id>.npz        train-split inputs, what static PTQ calibrates on;
  validation/<id>.val.npz     val-split inputs with targets, what quantisation choices are made on;
  fixtures/<id>.soak.npz      held-out inputs with targets, what the gate judges on (never chosen on);
  shift/<id>.shift.npz        val-split inputs under stronger degradations (tinyq.zoo.shift).
"""

from __future__ import annotations

from pathlib import Path


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
