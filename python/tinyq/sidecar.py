"""Model sidecars (<basename>.json beside each model): writing them from a spec and a registry entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from tinyq import registry

# Sidecar fields copied verbatim from the registry entry (the trust root).
FROM_REGISTRY = ("id", "kind", "onnx", "opset", "sha256", "quant_mode", "int8_sha256", "quant_accuracy_budget_plcc")


def build(
    entry: Mapping[str, Any],
    *,
    inputs: Sequence[Dict[str, Any]],
    outputs: Sequence[Dict[str, Any]],
    arch: Mapping[str, Any],
    n_params: int,
    features: Optional[Sequence[str]] = None,
    input_mean: Optional[Sequence[float]] = None,
    input_std: Optional[Sequence[float]] = None,
    notes: Optional[str] = None,
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
    out["arch"] = dict(arch)
    out["n_params"] = int(n_params)
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
