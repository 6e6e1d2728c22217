"""The files a registry names, read leniently so that even an invalid registry protects them, and
the one registry write that is not a tool's transaction (train_model's upsert)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from tinyq.registry import layout, registry


def _entry_files(root: Path, i: int, m: Dict[str, Any]) -> Dict[Path, str]:
    mid = m["id"] if isinstance(m.get("id"), str) and registry.ID_PATTERN.fullmatch(m["id"]) else None
    name = str(m.get("id", f"models[{i}]"))
    return {path: f"the {what} of {name!r}" for _, path, what in layout.entry_files(root, m, mid)}


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
