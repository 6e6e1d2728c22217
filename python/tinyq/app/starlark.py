"""Reads literal constants (lists, dicts, strings) from .bzl files, which parse as Python.

Macros declare one target per model from model/zoo.bzl; tools and tests read the same
constants here instead of repeating them.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any


def constant(path: Path, name: str) -> Any:
    """The value of a top-level `NAME = <literal>` in a .bzl file."""
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(f"{path}: no top-level constant {name}")
