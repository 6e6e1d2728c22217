"""Refreshes the int8 pins after an intentional change.

Usage: tools/bazel run //model:update_pins

For every model with a recipe in model/zoo.bzl (ZOO_INT8) it copies the freshly built
//model:<id>_int8 artefact to model/tiny/<id>.int8.onnx (QAT artefacts are already there),
then records quant_mode, quant_encoding and quant_purpose (what the artefact is for: speed or
size), int8_sha256, the fp32 sha256 and, for static models, the calibration set in the registry,
and mirrors them into each sidecar. Models without a recipe go back to fp32.
Every pin, sidecar and the registry are written as one unit (tinyq.io.transaction) under the registry's
lock. It refuses an int8 artefact that is not smaller than its fp32 model (exit 3), and ends by
validating the registry (exit 1 if anything is still wrong). Nobody edits hashes by hand.

A pin is what this machine builds: tools/bazel hashes the artefacts the build with the given flags
gives (a remote cache's results included), deletes them and rebuilds them with cache reads off;
if the two differ nothing is pinned (exit 14).
"""

import hashlib
import os
import sys
from pathlib import Path

from tinyq.app import cli, starlark
from tinyq.io import transaction
from tinyq.io.fileio import atomic_write_all, dumps_json, read_regular, sha256_file
from tinyq.model import loading
from tinyq.quant import quantize
from tinyq.registry import layout, registry, sidecar

BUILT = Path("model") / "int8"  # in this target's runfiles


# Findings update_pins does not fix, and refuses to write over: a registry that is not one, or
# whose entries name files outside it, twice, or held-out data for choices.
_REFUSED = {"malformed_json", "duplicate_key", "missing_field", "unknown_field", "wrong_type", "bad_value",
            "unknown_quant_mode", "duplicate_id", "path_escape", "file_named_twice", "held_out_reused"}


def main(argv) -> int:
    if len(argv) > 1:
        raise cli.UsageError(f"update_pins takes no arguments, got {' '.join(argv[1:])}")
    ws = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not ws:
        raise cli.UsageError("run me with `tools/bazel run //model:update_pins`")
    tiny = Path(ws) / "model" / "tiny"
    with transaction.locked(tiny):  # one writer; every pin, sidecar and the registry land as one unit
        _refuse_unfixable(tiny / "registry.json")
        _refuse_what_the_cache_gave()
        return _update(tiny)


def _refuse_unfixable(reg_path: Path) -> None:
    """Validates before anything is read or written: stale pins are what update_pins fixes; a broken
    registry, or a path that leaves it, is refused with every such finding."""
    try:
        _, findings = registry.check(reg_path)
    except registry.RegistryReadError as e:
        raise cli.UsageError(str(e)) from None
    bad = [f for f in findings if f.code in _REFUSED]
    if bad:
        raise cli.UsageError("the registry has findings update_pins does not fix; nothing was written:\n"
                             + "\n".join(f.format(reg_path) for f in bad))


EXIT_NOT_REPRODUCED = 14  # the local rebuild differs from what the build with cache reads gave: nothing pinned


def _refuse_what_the_cache_gave() -> None:
    """tools/bazel hashes the artefacts the build with cache reads gave (TINYQ_PINS_BUILT_VIEW), then
    rebuilds them locally: a pin is what this machine builds, and a cache that gave other bytes is
    poisoned or the quantiser is not reproducible. Either way nothing is pinned."""
    view_path = os.environ.get("TINYQ_PINS_BUILT_VIEW")
    if not view_path:
        print("update_pins: WARNING: not run through tools/bazel, so the artefacts were not rebuilt locally and "
              "compared with what a cache gave", file=sys.stderr)
        return
    lines = read_regular(Path(view_path), 1 << 20).decode().splitlines()  # sha256sum's "<sha>  <name>"
    view = {name: sha for sha, name in (line.split(maxsplit=1) for line in lines)}
    built = {name: sha256_file(BUILT / name) for name in sorted(view) if (BUILT / name).is_file()}
    differ = [f"{name}: the build with cache reads gave sha256 {view[name]}, this machine builds {sha}"
              for name, sha in built.items() if sha != view[name]]
    if differ:
        raise _NotReproduced("the artefacts built here differ from those the build with cache reads gave; nothing was "
                             "pinned:\n  " + "\n  ".join(differ) + "\nA remote cache (or an earlier build that read one) "
                             "holds results this machine does not reproduce: do not pin them. Tell the cache's owner; "
                             "`tools/bazel clean` drops them here")


class _NotReproduced(cli.UsageError):
    exit_code = EXIT_NOT_REPRODUCED


def _update(tiny: Path) -> int:
    recipes = starlark.constant(Path("model/zoo.bzl"), "ZOO_INT8")
    reg_path = tiny / "registry.json"
    data = registry.read_json(reg_path)
    files = {}  # path -> new bytes, or None to remove
    for entry in data["models"]:
        mid = entry["id"]
        fp32 = tiny / entry["onnx"]
        int8 = layout.int8_path_for(fp32)
        entry["sha256"] = sha256_file(fp32)
        recipe = recipes.get(mid)
        if recipe is None:
            entry["quant_mode"] = "fp32"
            for field in ("int8_sha256", "quant_calibration_set", "quant_encoding", "quant_purpose"):
                entry.pop(field, None)
            if int8.exists():
                files[int8] = None
                print(f"update_pins: {mid}: fp32, removing {int8.name}")
            continue
        payload = (BUILT / f"{mid}.int8.onnx" if recipe["mode"] != "qat" else int8).read_bytes()
        if not int8.exists() or int8.read_bytes() != payload:
            files[int8] = payload
        size, fp32_size = len(payload), loading.model_bytes_on_disk(fp32)
        if size >= fp32_size:
            print(f"update_pins: {mid}: {int8.name} ({size} B) is not smaller than {fp32.name} ({fp32_size} B); refusing to pin it",
                  file=sys.stderr)
            return quantize.EXIT_LARGER
        entry["quant_mode"] = recipe["mode"]
        entry["quant_encoding"] = recipe["encoding"]
        entry["quant_purpose"] = recipe["purpose"]
        entry["int8_sha256"] = hashlib.sha256(payload).hexdigest()
        if recipe["mode"] == "static":
            entry["quant_calibration_set"] = f"calibration/{mid}.npz"
        else:
            entry.pop("quant_calibration_set", None)
        print(f"update_pins: {mid}: {recipe['mode']} ({recipe['purpose']}), {fp32_size} -> {size} B (x{fp32_size / size:.2f}), int8 sha256 {entry['int8_sha256']}")
    for entry in data["models"]:
        side_path = layout.sidecar_path_for(tiny / entry["onnx"])
        files[side_path] = dumps_json(sidecar.sync(registry.read_json(side_path), entry)).encode()
    files[reg_path] = dumps_json(data).encode()  # last: the journal lies beside it
    atomic_write_all(list(files.items()))

    _, findings = registry.check(reg_path)
    for f in findings:
        print(f.format(reg_path), file=sys.stderr)
    return cli.EXIT_FAIL if registry.errors(findings, strict=True) else cli.EXIT_OK  # the zoo's own registry: strict


if __name__ == "__main__":
    cli.run(main)
