"""Static int8 quantisation (QDQ) of an fp32 ONNX model, calibrated on real data (quant_mode "static").

Usage: bazel run //python:ptq_static -- path/model.onnx [--calibration X.npz] [--calibrate-method
           minmax|entropy|percentile] [--per-channel] [--output P] [--report-out R]

--calibration defaults to the registry's quant_calibration_set for the model. The .npz is checked
against the graph before anything runs: every input name present, no extra keys, shapes
compatible, float32, all finite, at least one sample. Exit codes: 0 written, 2 bad input,
3 written but not smaller than the fp32 model.
"""

import sys
import time

import numpy as np
from absl import flags

from tinyq import calibration, cli, provenance, quantize, registry
from tinyq.fileio import atomic_write_bytes, sha256_file

_CALIBRATION = flags.DEFINE_string("calibration", None, "Calibration .npz (default: the registry's quant_calibration_set).")
_METHOD = flags.DEFINE_enum("calibrate-method", "minmax", ["minmax", "entropy", "percentile"], "Calibration method.")
_PER_CHANNEL = flags.DEFINE_bool("per-channel", False, "Per-output-channel weight scales.")
_OUTPUT = flags.DEFINE_string("output", None, "Output path (default: <input basename>.int8.onnx beside the input).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry for the default calibration set (default: model/tiny/registry.json).")
_REPORT = flags.DEFINE_string("report-out", None, "Write a tinyq-ptq-static-report-v1 JSON report here.")


def _registry_calibration(src):
    path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    try:
        reg, _ = registry.check(path)
    except registry.RegistryReadError as e:
        raise cli.UsageError(f"no --calibration given and {e}") from None
    if reg is None:
        raise cli.UsageError(f"no --calibration given and {path} is invalid; run //python:validate_registry")
    for m in reg.models:
        if m.onnx.resolve() == src.resolve():
            if m.calibration_set is None:
                raise cli.UsageError(f"{path}: {m.id} has no quant_calibration_set; pass --calibration X.npz")
            return m.calibration_set
    raise cli.UsageError(f"no --calibration given and {src} is not in {path}; pass --calibration X.npz")


def main(argv):
    if len(argv) != 2:
        raise cli.UsageError("expected exactly one fp32 model path")
    src = cli.resolve_user_path(argv[1])
    out = cli.resolve_user_path(_OUTPUT.value) if _OUTPUT.value else quantize.default_output(src)
    calib_path = cli.resolve_user_path(_CALIBRATION.value) if _CALIBRATION.value else _registry_calibration(src)
    start = time.monotonic()
    try:
        model, repairs = quantize.load_for_quantization(src)
        arrays = calibration.load_npz(calib_path, calibration.graph_inputs(model))
        int8 = quantize.quantize_static_qdq(model, arrays, method=_METHOD.value, per_channel=_PER_CHANNEL.value)
    except (quantize.QuantizeError, calibration.CalibrationError) as e:
        raise cli.UsageError(str(e)) from None
    atomic_write_bytes(out, int8)
    wall = time.monotonic() - start

    for r in repairs:
        print(f"ptq_static: repaired {r.code}: {r.detail}")
    sizes, code = quantize.announce("ptq_static", src, out, len(int8), "QDQ")
    if _REPORT.value:
        report = {
            "schema": "tinyq-ptq-static-report-v1",
            "output": str(out),
            **sizes,
            "settings": {"format": "QDQ", "calibrate_method": _METHOD.value, "per_channel": _PER_CHANNEL.value,
                         "activation_type": "uint8", "weight_type": "int8"},
            "calibration": {
                "path": str(calib_path),
                "sha256": sha256_file(calib_path),
                "samples": int(len(next(iter(arrays.values())))),
                "input_names": sorted(arrays),
                "shapes": {k: list(np.shape(v)) for k, v in sorted(arrays.items())},
            },
            "repairs": [{"code": r.code, "detail": r.detail} for r in repairs],
            "quantize_wall_time_s": round(wall, 3),
            "run_provenance": provenance.absl_provenance(
                tool="ptq_static", main_module=sys.modules[__name__],
                inputs=[(src, "fp32_model"), (calib_path, "calibration_set")], outputs=[(out, "int8_model")],
            ),
        }
        provenance.write_report(cli.resolve_user_path(_REPORT.value), report)
    return code


if __name__ == "__main__":
    cli.run(main)
