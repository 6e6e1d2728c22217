#!/usr/bin/env python3
"""Evidence for tools/remote_cache/two_clone_test.sh, read from Bazel's own output.

  check.py spawns EXEC_LOG          counts from --execution_log_json_file: prints
                                    "<quantiser hits> <quantiser local> <gate hits> <gate local>"
  check.py executed EXEC_LOG        where each ran, for remote execution (tools/remote_exec): prints
                                    "<quantisers remote> <quantisers elsewhere> <gates remote> <gates elsewhere>"
  check.py pins WORKSPACE           every bazel-bin/model/int8/*.int8.onnx against its registry
                                    pin and its committed model/tiny file; exit 1 on a mismatch
  check.py lock-edit LOCK PACKAGE WHEEL
                                    replaces one pinned hash of PACKAGE in LOCK, one that is not
                                    WHEEL's, so pip still installs the same files

Exit codes: 0 ok, 1 a check failed, 2 bad arguments or unreadable input. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Iterator, List

REMOTE_HIT = "remote cache hit"


class Failure(Exception):
    """A check looked and found something wrong (exit 1)."""


class UsageError(Exception):
    """Bad arguments or unreadable input (exit 2)."""


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def spawns(log: Path) -> Iterator[dict]:
    """Bazel 4.2.3's JSON execution log: SpawnExec objects one after another, not an array."""
    text, decoder, i = read_text(log), json.JSONDecoder(), 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return
        try:
            spawn, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise UsageError(f"{log} is not a Bazel JSON execution log: {e}") from None
        yield spawn


def kind(spawn: dict) -> str:
    """"quantiser" (a genrule writing model/int8/*.int8.onnx), "gate" (test-setup.sh on a *_gate_test;
    Bazel's generate-xml.sh step after a test is not a test run) or ""."""
    outputs, args = spawn.get("listedOutputs", []), spawn.get("commandArgs", [])
    if spawn.get("mnemonic") == "Genrule" and any(re.search(r"/bin/model/int8/[^/]+\.int8\.onnx$", o) for o in outputs):
        return "quantiser"
    if (spawn.get("mnemonic") == "TestRunner" and len(args) > 1 and args[0].endswith("/test-setup.sh")
            and args[1].endswith("_gate_test")):
        return "gate"
    return ""


def spawn_counts(log: Path, runner: str = REMOTE_HIT) -> List[int]:
    """Quantisers and gate test runs: [quantisers whose runner is `runner`, the other quantisers,
    gates whose runner is `runner`, the other gates]."""
    counts = {"quantiser": [0, 0], "gate": [0, 0]}
    for s in spawns(log):
        k = kind(s)
        if k:
            counts[k][s.get("runner") != runner] += 1
    return counts["quantiser"] + counts["gate"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_pins(workspace: Path) -> str:
    registry = json.loads(read_text(workspace / "model/tiny/registry.json"))
    pins = {m["id"]: m.get("int8_sha256") for m in registry["models"]}
    built = sorted((workspace / "bazel-bin/model/int8").glob("*.int8.onnx"))
    if not built:
        raise Failure(f"no int8 artefact in {workspace}/bazel-bin/model/int8")
    bad = []
    for path in built:
        model_id = path.name[: -len(".int8.onnx")]
        digest = sha256(path)
        committed = workspace / "model/tiny" / path.name
        if digest != pins.get(model_id):
            bad.append(f"{path.name}: sha256 {digest}, registry pins {pins.get(model_id)}")
        elif not committed.is_file() or committed.read_bytes() != path.read_bytes():
            bad.append(f"{path.name}: differs from the committed {committed.relative_to(workspace)}")
    if bad:
        raise Failure("; ".join(bad))
    return f"{len(built)} int8 artefacts byte-identical to their pins"


def edit_lock(lock: Path, package: str, wheel: Path) -> str:
    """Swap one hash of PACKAGE that pip does not need for this machine's wheel."""
    used = sha256(wheel)
    text = read_text(lock)
    block = re.search(rf"(?ms)^{re.escape(package)}==\S+ \\\n(?:\s+--hash=sha256:[0-9a-f]{{64}}(?: \\)?\n)+", text)
    if not block:
        raise UsageError(f"{lock} pins no {package} with hashes")
    hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block.group(0))
    if used not in hashes:
        raise UsageError(f"{wheel.name} (sha256 {used}) is not among {package}'s pinned hashes")
    spare = [h for h in hashes if h != used]
    if not spare:
        raise UsageError(f"{package} pins only the wheel pip installs here; pick a package with two hashes")
    new = hashlib.sha256(b"tinyq two_clone_test: a lock this cache has never seen").hexdigest()
    lock.write_text(text[: block.start()] + block.group(0).replace(spare[0], new) + text[block.end():], encoding="utf-8")
    return f"{package}: pinned hash {spare[0][:12]}... -> {new[:12]}... (pip installs {wheel.name}, {used[:12]}...)"


def main(argv: List[str]) -> int:
    try:
        if len(argv) == 2 and argv[0] == "spawns":
            print(*spawn_counts(Path(argv[1])))
        elif len(argv) == 2 and argv[0] == "executed":
            print(*spawn_counts(Path(argv[1]), runner="remote"))
        elif len(argv) == 2 and argv[0] == "pins":
            print(check_pins(Path(argv[1])))
        elif len(argv) == 4 and argv[0] == "lock-edit":
            print(edit_lock(Path(argv[1]), argv[2], Path(argv[3])))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Failure as e:
        print(f"check: {e}", file=sys.stderr)
        return 1
    except UsageError as e:
        print(f"check: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
