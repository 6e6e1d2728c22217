"""The run_provenance block every tinyq report embeds, and the atomic report writer.

A report answers "what produced this, from what, with what, where": the tool and the hash of
its entry point, argv and the parsed flags, every input and output with its sha256, the
versions of the numeric stack and the lock file's hash, and the host's CPU and ISA flags.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from tinyq.io.fileio import atomic_write_bytes, dumps_json, sha256_file

SCHEMA = "tinyq-run-provenance-v1"
PACKAGES = ("onnx", "onnxruntime", "openvino", "torch", "numpy")

# ISA flags from /proc/cpuinfo that decide which int8 kernels a runtime can pick.
ISA_FLAGS = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
)

LOCK_ENV = "TINYQ_LOCK_SHA256"
_LOCK_IN_TREE = Path(__file__).parent.parent.parent / "requirements_lock.txt"

Artefact = Tuple[Any, ...]  # (path, kind), or (path, kind, bytes) for an output about to be written


def normalise(value: Any) -> Any:
    """A JSON-ready copy: paths and tuples become strings and lists, mapping keys strings, NaN and inf None."""
    if isinstance(value, Mapping):
        return {str(k): normalise(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN and inf are not JSON
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def describe_file(path: Any, kind: str, data: Optional[bytes] = None) -> Dict[str, Any]:
    """A file's path, kind, sha256 and size; from data when given (an output not yet on disk)."""
    p = Path(path)
    if data is not None:
        return {"path": os.fspath(p), "kind": kind, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    exists = p.is_file()
    return {
        "path": os.fspath(p),
        "kind": kind,
        "sha256": sha256_file(p) if exists else None,
        "bytes": p.stat().st_size if exists else None,
    }


def package_versions(packages: Iterable[str] = PACKAGES) -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def lock_sha256() -> Optional[str]:
    """The lock's sha256: set by the tinyq_venv interpreter wrapper, else hashed from the tree."""
    env = os.environ.get(LOCK_ENV)
    if env:
        return env
    return sha256_file(_LOCK_IN_TREE) if _LOCK_IN_TREE.is_file() else None


def host_facts() -> Dict[str, Any]:
    """The machine a report was made on, with the int8 arithmetic its CPU computes (tinyq.judge.arithmetic):
    verdicts and speed hold per CPU."""
    from tinyq.judge import arithmetic

    cpu = arithmetic.host_cpu()
    return {
        "cpu_model": cpu.model,
        "isa_flags": [f for f in ISA_FLAGS if f in cpu.flags],
        "int8_isa": cpu.int8_isa,
        "int8_arithmetic": cpu.native,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


_RUNFILES = re.compile(r"^.*?\.runfiles/[^/]+/")


def _relative(value: Any, root: Optional[str]) -> Any:
    """A path under the workspace root as a relative path, a tool inside Bazel's runfiles as its
    path in the repository (python/ptq_auto.py); anything else unchanged. Recurses into lists and
    mappings, so flag values are relativised too."""
    if isinstance(value, Mapping):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    in_runfiles = _RUNFILES.sub("", value, count=1)
    if in_runfiles != value:
        return in_runfiles
    if root and (value == root or value.startswith(root.rstrip("/") + "/")):
        return os.path.relpath(value, root)
    return value


def collect(
    *,
    tool: str,
    entry_point: Any,
    argv: Sequence[str],
    args: Mapping[str, Any],
    inputs: Iterable[Artefact] = (),
    outputs: Iterable[Artefact] = (),
) -> Dict[str, Any]:
    """The run_provenance block. Outputs are hashed from their bytes when given, else from disk
    (call it after they are written). Paths inside the workspace (BUILD_WORKSPACE_DIRECTORY, set by
    `bazel run`) are recorded relative to it, and the tool by its path in the repository; the
    absolute workspace root appears once, in "root", which can be dropped to share a report."""
    root = os.environ.get("BUILD_WORKSPACE_DIRECTORY") or None
    block = {
        "schema": SCHEMA,
        "tool": {"name": tool, "entry_point": os.fspath(entry_point), "sha256": sha256_file(entry_point)},
        "argv": [str(a) for a in argv],
        "args": normalise(dict(args)),
        "inputs": [describe_file(*a) for a in inputs],
        "outputs": [describe_file(*a) for a in outputs],
    }
    return {**_relative(block, root), "root": root, "versions": package_versions(), "lock_sha256": lock_sha256(),
            "host": host_facts()}


def tool_args(flag_values: Any, module_name: str) -> Dict[str, Any]:
    """The values of the flags a tool's own module defined (not absl's built-ins), normalised."""
    return normalise({f.name: f.value for f in flag_values.get_flags_for_module(module_name)})


def report_bytes(report: Mapping[str, Any]) -> bytes:
    """A report in tinyq's JSON layout: sorted keys, two-space indent, trailing newline."""
    return dumps_json(normalise(dict(report))).encode("utf-8")


def write_report(path: Any, report: Mapping[str, Any]) -> None:
    """Writes a report atomically."""
    atomic_write_bytes(path, report_bytes(report))


def absl_provenance(
    *,
    tool: str,
    main_module: Any,
    inputs: Iterable[Artefact] = (),
    outputs: Iterable[Artefact] = (),
) -> Dict[str, Any]:
    """collect() for an absl tool: argv from sys.argv, args from the flags its module defined."""
    from absl import flags  # absl is only needed by the command-line tools

    # absl files a script's flags under sys.argv[0], not "__main__".
    module_name = sys.argv[0] if main_module.__name__ == "__main__" else main_module.__name__
    return collect(
        tool=tool,
        entry_point=main_module.__file__,
        argv=sys.argv,
        args=tool_args(flags.FLAGS, module_name),
        inputs=inputs,
        outputs=outputs,
    )
