"""Held-out stays held out: no set a choice is made on (a calibration or validation set) may be a
soak fixture of the same registry, link to one, or hold its bytes. The gate judges on the soak
fixtures; a choice made on one of them would be judged on the data it was made on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from tinyq.io.fileio import sha256_file
from tinyq.registry import layout

ValidId = Callable[[str], Any]


def soak_fixtures(root: Path, models: Sequence[Any], valid_id: ValidId) -> List[Path]:
    """The soak fixtures the registry's entries imply that exist (stat only: none is opened)."""
    ids = [m["id"] for m in models if isinstance(m, dict) and isinstance(m.get("id"), str) and valid_id(m["id"])]
    return [p for p in (layout.fixture_path(root, mid) for mid in ids) if p.is_file()]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # one inode: the file itself, a symlink or a hard link to it
    except OSError:
        return False


def reused_fixture(path: Path, fixtures: Sequence[Path], hashes: Optional[Dict[Path, str]] = None) -> Optional[Path]:
    """The soak fixture path is, links to, or (when hashes, each fixture's sha256, are given) holds
    the bytes of; None when it is none of them. Without hashes nothing is opened."""
    for fixture in fixtures:
        if _same_file(path, fixture):
            return fixture
    if hashes and path.is_file():
        digest = sha256_file(path)
        return next((f for f, h in hashes.items() if h == digest), None)
    return None


def choice_sets(root: Path, m: Dict[str, Any], mid: str) -> List[Tuple[str, Path, str]]:
    """(field, path, what) for the sets one entry's choices are made on that exist."""
    calib = root / m["quant_calibration_set"] if isinstance(m.get("quant_calibration_set"), str) else None
    sets = [("quant_calibration_set" if calib else "id", calib or layout.calibration_path(root, mid), "calibration set"),
            ("id", layout.validation_path(root, mid), "validation set")]
    return [s for s in sets if s[1].is_file()]


def reuse_findings(root: Path, models: Sequence[Any], valid_id: ValidId, read_held_out: bool) -> List[Tuple[int, str, str]]:
    """(entry index, field, message) for each calibration or validation set that is a soak fixture
    of the registry. read_held_out=False compares files by identity only, opening no fixture."""
    fixtures = soak_fixtures(root, models, valid_id)
    hashes = {f: sha256_file(f) for f in fixtures} if read_held_out else None
    found = []
    for i, m in enumerate(models):
        if not (isinstance(m, dict) and isinstance(m.get("id"), str) and valid_id(m["id"])):
            continue
        for field, path, what in choice_sets(root, m, m["id"]):
            fixture = reused_fixture(path, fixtures, hashes)
            if fixture is not None:
                found.append((i, field, f"the {what} {path} is the soak fixture {fixture} (the same file, a link to it, "
                                        f"or its bytes): choices would be made on the held-out data that judges them"))
    return found
