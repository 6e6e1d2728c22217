"""Data-free int8 quantisation of an fp32 ONNX model (quant_mode "dynamic").

Usage: bazel run //python:ptq_dynamic -- path/model.onnx [--output P] [--per-channel]
           [--encoding auto|weight_only|dynamic] [--report-out R]

Repairs real-export traps first (stale value_info, moved external data), refuses fp16 models and
unsupported opsets with the fix, then writes <basename>.int8.onnx beside the input (atomically).
--encoding auto keeps the smallest data-free encoding: onnxruntime's quantize_dynamic, or int8
weights behind DequantizeLinear. Exit codes: 0 written, 2 bad input, 3 written but not smaller
than the fp32 model (tinyq refuses to register such an artefact).
"""

import sys
import time

from absl import flags

from tinyq import cli, provenance, quantize
from tinyq.fileio import atomic_write_bytes

_OUTPUT = flags.DEFINE_string("output", None, "Output path (default: <input basename>.int8.onnx beside the input).")
_PER_CHANNEL = flags.DEFINE_bool("per-channel", False, "Per-output-channel weight scales.")
_ENCODING = flags.DEFINE_enum("encoding", "auto", list(quantize.ENCODINGS), "Which int8 encoding to write.")
_REPORT = flags.DEFINE_string("report-out", None, "Write a tinyq-ptq-dynamic-report-v1 JSON report here.")


def main(argv):
    if len(argv) != 2:
        raise cli.UsageError("expected exactly one fp32 model path")
    src = cli.resolve_user_path(argv[1])
    out = cli.resolve_user_path(_OUTPUT.value) if _OUTPUT.value else quantize.default_output(src)
    start = time.monotonic()
    try:
        model, repairs = quantize.load_for_quantization(src)
        encoded = quantize.encode(model, _ENCODING.value, _PER_CHANNEL.value)
    except quantize.QuantizeError as e:
        raise cli.UsageError(str(e)) from None
    atomic_write_bytes(out, encoded.model_bytes)
    wall = time.monotonic() - start

    for r in repairs:
        print(f"ptq_dynamic: repaired {r.code}: {r.detail}")
    sizes, code = quantize.announce("ptq_dynamic", src, out, encoded.size, encoded.encoding)
    if _REPORT.value:
        report = {
            "schema": "tinyq-ptq-dynamic-report-v1",
            "output": str(out),
            **sizes,
            "settings": {"encoding_requested": _ENCODING.value, "encoding": encoded.encoding, "per_channel": _PER_CHANNEL.value,
                         "weight_type": "int8"},
            "repairs": [{"code": r.code, "detail": r.detail} for r in repairs],
            "quantize_wall_time_s": round(wall, 3),
            "run_provenance": provenance.absl_provenance(
                tool="ptq_dynamic", main_module=sys.modules[__name__], inputs=[(src, "fp32_model")], outputs=[(out, "int8_model")]
            ),
        }
        provenance.write_report(cli.resolve_user_path(_REPORT.value), report)
    return code


if __name__ == "__main__":
    cli.run(main)
