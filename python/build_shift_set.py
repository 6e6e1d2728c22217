"""Writes each zoo model's shift set: val-split inputs under degradations stronger than the
corpus holds (tinyq.zoo.shift), to see how int8 holds up off the calibration distribution.

Usage: tools/bazel run //python:build_shift_set -- [--models a,b] [--check]

  model/tiny/shift/<id>.shift.npz   one [N, ...] float32 array per ONNX input, named as the input,
                                    nothing else; built only from the val split

Judge an int8 model on one with the gate:
  tools/bazel run //python:measure_quant_drop -- --id ID --data model/tiny/shift/ID.shift.npz

Input names and shapes are checked against each model's ONNX graph before anything is written.
Every step is seeded and single-threaded: --check regenerates the sets in memory and exits 1
when a committed file is missing or differs byte for byte.
"""

import sys
import time

from absl import flags

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_bytes, npz_bytes
from tinyq.model import calibration
from tinyq.registry import layout, registry
from tinyq.zoo import shift, zoo

_MODELS = flags.DEFINE_list("models", None, "Model ids (default: every zoo model in the registry).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")
_CHECK = flags.DEFINE_bool("check", False, "Write nothing: exit 1 when a committed shift set differs from a fresh build.")
_REPORT = flags.DEFINE_string("report-out", None, "Write a JSON report with run_provenance here.")


def _arrays(reg, mid: str, cache: dict):
    """The model's shift set, checked against its graph inputs."""
    if mid not in zoo.SPECS:
        raise cli.UsageError(f"{mid!r} is not a zoo model; shift sets exist for: {', '.join(zoo.SPECS)}")
    try:
        entry = reg.get(mid)
    except KeyError as e:
        raise cli.UsageError(str(e.args[0])) from None
    inputs = calibration.graph_inputs(entry.onnx)
    try:
        arrays = shift.build(reg.root, mid, inputs, cache, progress=lambda s: print(f"{mid}: {s}", flush=True))
    except (ValueError, calibration.CalibrationError) as e:
        raise cli.UsageError(str(e)) from None
    problems = calibration.check_arrays(arrays, inputs)
    if problems:
        raise cli.UsageError("\n".join(f"{mid}: {p}" for p in problems))
    return arrays


def _differs(path, data: bytes) -> str:
    if not path.is_file():
        return "missing"
    return "differs" if path.read_bytes() != data else ""


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    cli.guard_flags({"--report-out": _REPORT.value}, [], reg_path)
    reg = cli.load_valid_registry(reg_path, read_held_out=False)
    ids = _MODELS.value or [m.id for m in reg.models if m.id in zoo.SPECS]
    cache, outputs, stale, start = {}, [], [], time.monotonic()
    for mid in ids:
        arrays = _arrays(reg, mid, cache)
        path, data = layout.shift_path(reg.root, mid), npz_bytes(arrays)
        shapes = {k: list(v.shape) for k, v in arrays.items()}
        if _CHECK.value:
            verdict = _differs(path, data)
            stale += [f"{path}: {verdict}"] if verdict else []
            print(f"{mid}: {path} {verdict or 'byte-identical'} {shapes}")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        outputs.append((path, "shift"))
        print(f"{mid}: wrote {path} {shapes} ({len(data)} bytes)")
    print(f"{len(ids)} models in {time.monotonic() - start:.0f} s")
    if _REPORT.value:
        _write_report(ids, reg, reg_path, outputs, stale)
    if stale:
        sys.stderr.write("shift sets out of date (rebuild with tools/bazel run //python:build_shift_set):\n  "
                         + "\n  ".join(stale) + "\n")
        return cli.EXIT_FAIL
    return cli.EXIT_OK


def _write_report(ids, reg, reg_path, outputs, stale) -> None:
    vals = [layout.validation_path(reg.root, m) for m in ids]
    report = {
        "schema": "tinyq-build-shift-set-report-v1",
        "models": ids,
        "check": bool(_CHECK.value),
        "stale": stale,
        "run_provenance": provenance.absl_provenance(
            tool="build_shift_set", main_module=sys.modules[__name__],
            inputs=[(p, "validation") for p in vals if p.is_file()] + [(reg_path, "registry")], outputs=outputs,
        ),
    }
    provenance.write_report(cli.resolve_user_path(_REPORT.value), report)


if __name__ == "__main__":
    cli.run(main)
