"""Data-free int8 quantisation of an fp32 ONNX model (quant_mode "dynamic").

Usage: bazel run //python:ptq_dynamic -- path/model.onnx [--output P] [--per-channel]
           [--encoding auto|weight_only|dynamic] [--overflow-fix needed|all|none] [--report-out R]

Repairs real-export traps first (stale value_info, moved external data), refuses fp16 models,
already-quantised models and unsupported opsets with the fix, then writes <basename>.int8.onnx
beside the input. --encoding auto (the default) writes weight_only (int8 weights behind
DequantizeLinear; activations stay fp32), and onnxruntime's quantize_dynamic only when weight_only
quantises no weight: dynamic is slower than weight_only on tiny models, so it is never picked to
save bytes. --overflow-fix (default needed) gives the dynamic encoding's MatMulInteger/ConvInteger
layers 7-bit weights where their int16 pair sums could saturate on AVX2 (tinyq.quant.overflow). The artefact is stripped of doc strings and metadata (no local paths), and it and the
report are written both or neither. Both report and output say what fraction of the weights is
int8, and which ops stayed fp32 and why.
Exit codes: 0 written; 2 bad input or an unusable path (a missing directory, an output that is
the input or a registry's fp32 model), nothing written; 3 written but not smaller than the fp32
model (tinyq refuses to register it); 4 refused, the artefact would quantise no weight, nothing
written.
"""

import time

from absl import flags

from tinyq.app import cli, ptq
from tinyq.quant import quantize

_OUTPUT = flags.DEFINE_string("output", None, "Output path (default: <input basename>.int8.onnx beside the input).")
_PER_CHANNEL = flags.DEFINE_bool("per-channel", False, "Per-output-channel weight scales.")
_ENCODING = flags.DEFINE_enum("encoding", "auto", list(quantize.ENCODINGS), "Which int8 encoding to write.")
_OVERFLOW_FIX = flags.DEFINE_enum("overflow-fix", "needed", ["needed", "all", "none"], ptq.OVERFLOW_FIX_HELP)
_REPORT = flags.DEFINE_string("report-out", None, "Write a tinyq-ptq-dynamic-report-v1 JSON report here.")


def main(argv):
    p = ptq.paths(argv, _OUTPUT.value, _REPORT.value)
    ptq.guard(p)
    start = time.monotonic()
    model, repairs = _load(p.src)
    try:
        encoded = quantize.encode(model, _ENCODING.value, _PER_CHANNEL.value, _OVERFLOW_FIX.value)
    except quantize.QuantizeError as e:
        raise cli.UsageError(f"{p.src}: {e}") from None
    wall = time.monotonic() - start
    for r in repairs:
        print(f"ptq_dynamic: repaired {r.code}: {r.detail}")
    report = {
        "schema": "tinyq-ptq-dynamic-report-v1",
        "settings": {"encoding_requested": _ENCODING.value, "encoding": encoded.encoding, "encoding_why": encoded.why,
                     "per_channel": _PER_CHANNEL.value, "weight_type": "int8"},
        "repairs": [{"code": r.code, "detail": r.detail} for r in repairs],
        "quantize_wall_time_s": round(wall, 3),
        "overflow": ptq.overflow_report("ptq_dynamic", encoded.model_bytes, _OVERFLOW_FIX.value),
    }
    return ptq.finish("ptq_dynamic", p, encoded.model_bytes, encoded.coverage, encoded.encoding, report,
                      inputs=[(p.src, "fp32_model")],
                      larger_hint="Try --encoding=weight_only, or keep the model fp32.")


def _load(src):
    try:
        return quantize.load_for_quantization(src)
    except quantize.QuantizeError as e:
        raise cli.UsageError(str(e)) from None


if __name__ == "__main__":
    cli.run(main)
