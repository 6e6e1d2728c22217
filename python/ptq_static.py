"""Static int8 quantisation (QDQ) of an fp32 ONNX model, calibrated on real data (quant_mode "static").

Usage: bazel run //python:ptq_static -- path/model.onnx [--calibration X.npz] [--calibrate-method
           minmax|entropy|percentile] [--per-channel] [--fp32-nodes a,b,...] [--rewrite a,b] [--output P]
           [--overflow-fix needed|all|none] [--report-out R] [--registry R]

--calibration defaults to the registry's quant_calibration_set for the model. The .npz is checked
against the graph before anything runs: every input name present, no extra keys (a `target` is
checked, then ignored), shapes compatible, float32, all finite, at least one sample. Calibration feeds the model at the batch
size it accepts: one sample at a time for a model whose batch is fixed at 1. The encoding is the
one that runs fastest on x86: uint8 activations, int8 symmetric weights, on the ops with int8
kernels (tinyq.quant.quantize.STATIC_OP_TYPES); --fp32-nodes keeps the named nodes in fp32 (ptq_auto's
recipes name them); --rewrite applies kernel-aware graph rewrites that change no output and put
more convolutions on onnxruntime's fused int8 path (tinyq.quant.rewrites; the report's conv_kernels
names each QLinearConv's missed conditions); --overflow-fix (default needed) re-encodes in 7 bits the
weights of every layer whose int16 pair sums could saturate on AVX2 (tinyq.quant.overflow), so the
artefact computes the same on every CPU. The artefact is stripped
of doc strings and metadata, and it and the report are written both or neither.
Exit codes: 0 written; 2 bad input or an unusable path (a missing directory, an output that is
an input or a registry's fp32 model), nothing written; 3 written but not smaller than the fp32
model; 4 refused, the artefact would quantise no weight, nothing written.
"""

import sys
import time

import numpy as np
from absl import flags

from tinyq.app import cli, ptq
from tinyq.io.fileio import sha256_file
from tinyq.model import calibration
from tinyq.quant import quantize, rewrites
from tinyq.registry import registry

_CALIBRATION = flags.DEFINE_string("calibration", None, "Calibration .npz (default: the registry's quant_calibration_set).")
_METHOD = flags.DEFINE_enum("calibrate-method", "minmax", ["minmax", "entropy", "percentile"], "Calibration method.")
_PER_CHANNEL = flags.DEFINE_bool("per-channel", False, "Per-output-channel weight scales.")
_AUGMENT = flags.DEFINE_bool("calibration-augment", False, "Range-robust calibration: add seeded noisy copies of the "
                             "calibration set (tinyq.model.calibration.augmented), so ranges cover noisier inputs.")
_SAMPLES = flags.DEFINE_integer("calibration-samples", None, "Calibrate on this many seeded samples of the set (after "
                                "--calibration-augment): what ptq_auto's recipe asks for when --max-memory capped "
                                "an Entropy or Percentile calibration.", lower_bound=1)
_FP32_NODES = flags.DEFINE_list("fp32-nodes", [], "Nodes of the fp32 graph to leave unquantised (by node name).")
_REWRITE = flags.DEFINE_list("rewrite", [], "Kernel-aware graph rewrites, outputs unchanged (tinyq.quant.rewrites): "
                              "pad_conv_inputs, pad_conv_outputs.")
_OUTPUT = flags.DEFINE_string("output", None, "Output path (default: <input basename>.int8.onnx beside the input).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry for the default calibration set (default: model/tiny/registry.json).")
_OVERFLOW_FIX = flags.DEFINE_enum("overflow-fix", "needed", ["needed", "all", "none"], ptq.OVERFLOW_FIX_HELP)
_REPORT = flags.DEFINE_string("report-out", None, "Write a tinyq-ptq-static-report-v1 JSON report here.")

_LARGER_HINT = ("Static QDQ adds quantise/dequantise nodes and scales around every tensor, which a model this small "
                "does not pay back: try `ptq_dynamic --encoding=weight_only`, or keep the model fp32.")


def _registry_calibration(src, reg_path):
    try:
        reg, _ = registry.check(reg_path)
    except registry.RegistryReadError as e:
        raise cli.UsageError(f"no --calibration given and {e}") from None
    if reg is None:
        raise cli.UsageError(f"no --calibration given and {reg_path} is invalid; run //python:validate_registry")
    for m in reg.models:
        if m.onnx.resolve() == src.resolve():
            if m.calibration_set is None:
                raise cli.UsageError(f"{reg_path}: {m.id} has no quant_calibration_set; pass --calibration X.npz")
            return m.calibration_set
    raise cli.UsageError(f"no --calibration given and {src} is not in {reg_path}; pass --calibration X.npz")


def _quantise(src, calib_path):
    """(model, repairs, arrays, batch, int8 bytes); bad input becomes a UsageError naming the file."""
    try:
        model, repairs = quantize.load_for_quantization(src)
        arrays = calibration.load_inputs(calib_path, calibration.graph_inputs(model))
        if _AUGMENT.value:
            arrays = calibration.augmented(arrays)
        if _SAMPLES.value:
            arrays = calibration.subset(arrays, _SAMPLES.value)
    except (quantize.QuantizeError, calibration.CalibrationError) as e:
        raise cli.UsageError(str(e)) from None
    batch = quantize.calibration_batch(model, len(next(iter(arrays.values()))))
    unknown = sorted(set(_FP32_NODES.value) - {n.name for n in model.graph.node})
    if unknown:
        raise cli.UsageError(f"{src}: --fp32-nodes names nodes the graph does not have: {', '.join(unknown)}")
    try:
        rewrites.check_names(_REWRITE.value)
    except ValueError as e:
        raise cli.UsageError(f"--rewrite: {e}") from None
    try:
        int8 = quantize.quantize_static_qdq(model, arrays, method=_METHOD.value, per_channel=_PER_CHANNEL.value,
                                            exclude_nodes=_FP32_NODES.value, batch=batch, rewrites=_REWRITE.value,
                                            overflow_fix=_OVERFLOW_FIX.value)
    except quantize.QuantizeError as e:
        raise cli.UsageError(f"{src}: {e}") from None
    return model, repairs, arrays, batch, int8


def main(argv):
    p = ptq.paths(argv, _OUTPUT.value, _REPORT.value)
    reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    calib_path = cli.resolve_user_path(_CALIBRATION.value) if _CALIBRATION.value else _registry_calibration(p.src, reg_path)
    ptq.guard(p, [calib_path], reg_path)
    start = time.monotonic()
    _, repairs, arrays, batch, int8 = _quantise(p.src, calib_path)
    wall = time.monotonic() - start
    samples = int(len(next(iter(arrays.values()))))
    for r in repairs:
        print(f"ptq_static: repaired {r.code}: {r.detail}")
    print(f"ptq_static: calibrated on {samples} samples from {calib_path}, {batch} at a time")
    warning = calibration.tiny_data_warning("the calibration set", calib_path, arrays, calibration.MIN_CALIBRATION_SAMPLES)
    if warning:
        print(warning, file=sys.stderr)
    report = {
        "schema": "tinyq-ptq-static-report-v1",
        "settings": {"format": "QDQ", "calibrate_method": _METHOD.value, "per_channel": _PER_CHANNEL.value,
                     "activation_type": "uint8", "weight_type": "int8", "weight_symmetric": True,
                     "op_types": list(quantize.STATIC_OP_TYPES), "fp32_nodes": list(_FP32_NODES.value),
                     "rewrites": list(_REWRITE.value),
                     "calibration_augment": list(calibration.AUGMENT_SIGMAS) if _AUGMENT.value else None},
        "calibration": {
            "path": str(calib_path),
            "sha256": sha256_file(calib_path),
            "samples": samples,
            "batch": batch,
            "input_names": sorted(arrays),
            "shapes": {k: list(np.shape(v)) for k, v in sorted(arrays.items())},
        },
        "repairs": [{"code": r.code, "detail": r.detail} for r in repairs],
        "quantize_wall_time_s": round(wall, 3),
        "conv_kernels": [k.as_dict() for k in rewrites.conv_kernels(int8)],
        "overflow": ptq.overflow_report("ptq_static", int8, _OVERFLOW_FIX.value),
    }
    cov = quantize.coverage_of(int8, "static")
    return ptq.finish("ptq_static", p, int8, cov, "QDQ", report,
                      inputs=[(p.src, "fp32_model"), (calib_path, "calibration_set")], larger_hint=_LARGER_HINT)


if __name__ == "__main__":
    cli.run(main)
