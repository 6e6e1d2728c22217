"""Strict JSON for a registry: UTF-8, no key given twice, only finite numbers (RFC 8259), bounded
nesting; each refusal is a Finding that says why the file is not JSON tinyq accepts."""

from __future__ import annotations

import json
import math
from typing import Any, List, Tuple

from tinyq.registry.registry_findings import _FIXES, Finding


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs):
    """json's object_pairs_hook: a key given twice is refused (json.loads would keep the last silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _NotFinite(Exception):
    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def _finite_float(text: str) -> float:
    """json's parse_float: a number too large for a double (1e999) would become inf."""
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _no_constant(name: str):
    """json's parse_constant: NaN, Infinity and -Infinity are not JSON (RFC 8259); Python reads them."""
    raise _NotFinite(name)


def parse_registry(raw: bytes) -> Tuple[Any, List[Finding]]:
    """The registry's JSON, or the finding that says why it is not JSON tinyq accepts."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_float=_finite_float,
                          parse_constant=_no_constant), []
    except _NotFinite as e:
        return None, [Finding("malformed_json", "(registry)", "", f"{e.text} is not a finite JSON number (RFC 8259); "
                              f"a budget, like every number in a registry, must be one", _FIXES["malformed_json"])]
    except UnicodeDecodeError as e:
        return None, [Finding("malformed_json", "(registry)", "", f"not UTF-8 at byte {e.start}", _FIXES["malformed_json"])]
    except _DuplicateKey as e:
        return None, [Finding("duplicate_key", "(registry)", "", f"key {e.key!r} appears twice in one object",
                              _FIXES["duplicate_key"])]
    except RecursionError:
        return None, [Finding("malformed_json", "(registry)", "", "nested too deeply to be a registry",
                              _FIXES["malformed_json"])]
    except json.JSONDecodeError as e:
        return None, [Finding("malformed_json", "(registry)", "", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}",
                              _FIXES["malformed_json"])]
