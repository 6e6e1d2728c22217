"""Benchmarks tinyq's int8 artefacts against plain quantize_dynamic, side by side in one run.

Usage: tools/bazel run //python:bench_ptq -- [--candidates] [--models a,b] [--out-json R]

Per zoo model and variant: int8 size and fp32/int8 ratio, the drop (1 - Pearson r of fp32 vs int8
outputs) on the model's soak fixture, and int8/fp32 latency on onnxruntime's CPU provider (one
thread, median of repeated runs in this process) at batch 1 and batch 256. Variants:
  ort_default  onnxruntime.quantization.quantize_dynamic with its defaults, on the fp32 file
  tinyq        the pinned artefact, model/tiny/<id>.int8.onnx (quantised models only)
  --candidates adds every encoding tinyq can choose from, for the per-model decisions.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from absl import flags

from tinyq.app import cli, provenance
from tinyq.judge import drops
from tinyq.model import calibration, loading, runner
from tinyq.quant import quantize
from tinyq.registry import layout, registry

_CANDIDATES = flags.DEFINE_bool("candidates", False, "Also measure every candidate encoding.")
_MODELS = flags.DEFINE_list("models", None, "Model ids (default: all in the registry).")
_REPEATS = flags.DEFINE_integer("repeats", 200, "Timed runs at batch 1 (batch 256 uses a tenth).", lower_bound=5)
_OUT_JSON = flags.DEFINE_string("out-json", None, "Write the rows as JSON with run_provenance here.")


def _ort_default(fp32: Path) -> bytes:
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(fp32), str(out))
        return out.read_bytes()


def _candidates(entry) -> dict:
    model, _ = quantize.load_for_quantization(entry.onnx)
    out = {}
    for enc in ("weight_only", "dynamic"):
        for pc in (True, False):
            out[f"{enc}{'_pc' if pc else ''}"] = quantize.encode(model, enc, pc).model_bytes
    calib_path = layout.calibration_path(entry.onnx.parent, entry.id)
    if calib_path.is_file():
        arrays = calibration.load_npz(calib_path, calibration.graph_inputs(model))
        for method in ("minmax", "percentile"):
            out[f"static_{method}_pc"] = quantize.quantize_static_qdq(model, arrays, method=method, per_channel=True)
    return out


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    reg_path = cli.workspace_dir() / registry.DEFAULT_REGISTRY
    reg = cli.load_valid_registry(reg_path)
    ids = _MODELS.value or [m.id for m in reg.models]
    rows = []
    print("| model | variant | int8 B | fp32/int8 size | soak drop | int8/fp32 latency b1 | int8/fp32 latency b256 |")
    print("|---|---|---|---|---|---|---|")
    for mid in ids:
        entry = reg.get(mid)
        fixture = layout.fixture_path(entry.onnx.parent, mid)
        names = [i.name for i in calibration.graph_inputs(entry.onnx)]
        feeds = runner.inputs_only(calibration.load_npz(fixture, calibration.graph_inputs(entry.onnx), (calibration.TARGET_KEY,)), names)
        fp32_sess = runner.session(entry.onnx)
        ref = runner.run_all(fp32_sess, feeds)
        lat32 = runner.latency_table(fp32_sess, feeds, _REPEATS.value)
        fp32_bytes = loading.model_bytes_on_disk(entry.onnx)
        variants = {"ort_default": _ort_default(entry.onnx)}
        if entry.quantised:
            variants["tinyq"] = entry.int8_onnx.read_bytes()
        if _CANDIDATES.value:
            variants.update(_candidates(entry))
        for name, blob in variants.items():
            sess = runner.session(blob)
            out = runner.run_all(sess, feeds)
            drop = drops.pearson_drop(np.concatenate([r.ravel() for r in ref]), np.concatenate([o.ravel() for o in out]))
            lat = runner.latency_table(sess, feeds, _REPEATS.value)
            row = {
                "id": mid, "variant": name, "fp32_bytes": fp32_bytes, "int8_bytes": len(blob),
                "size_ratio": fp32_bytes / len(blob), "soak_drop": drop, "budget": entry.budget_plcc,
                "fp32_latency_ms": lat32, "int8_latency_ms": lat,
                "latency_ratio": {b: lat[b] / lat32[b] for b in lat},
            }
            rows.append(row)
            print(f"| {mid} | {name} | {len(blob)} | x{row['size_ratio']:.2f} | {drop:.2e} | "
                  f"{row['latency_ratio']['1']:.2f} | {row['latency_ratio']['256']:.2f} |", flush=True)
    if _OUT_JSON.value:
        provenance.write_report(cli.resolve_user_path(_OUT_JSON.value), {
            "schema": "tinyq-bench-ptq-v1", "rows": rows,
            "run_provenance": provenance.absl_provenance(tool="bench_ptq", main_module=sys.modules[__name__],
                                                         inputs=[(reg_path, "registry")]),
        })
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
