"""Peer benchmark: tinyq's auto choice against onnxruntime's quantize_static and NNCF's
quantize_with_accuracy_control, on every zoo model, in one run.

Usage: tools/bazel run //python:bench_peers -- [--models a,b] [--out-json R] [--out-md R]

All three get the same budget (the registry's) and the same selection data: the calibration set
(train split) to calibrate, the validation set (val split) for any accuracy-driven choice. All
three are then judged on the soak fixture, which none of them saw:
  tinyq   the pinned artefact model/tiny/<id>.int8.onnx, rebuilt by //model:<id>_int8 from the
          recipe ptq_auto chose (model/zoo.bzl);
  ort     onnxruntime.quantization.quantize_static, QDQ, uint8 activations and int8 weights, its
          default op types and MinMax calibration;
  nncf    nncf.quantize_with_accuracy_control (ONNX backend), max_drop = the budget on the
          validation set, measured as the gate measures it (1 - Pearson r, residual for filters).
Columns: size, soak drop (the gate's), within budget, the task metric on the soak fixture, and
int8 against fp32 latency at batch 1 and 256 (tinyq.auto.LatencyMeter: runs interleaved, one
thread, medians of the calling thread's CPU time).
"""

import sys
import tempfile
from pathlib import Path

from absl import flags

from tinyq import auto, calibration, cli, gate, provenance, quantize, registry, runner
from tinyq.fileio import atomic_write_bytes

_MODELS = flags.DEFINE_list("models", None, "Model ids (default: every quantised registry model).")
_OUT_JSON = flags.DEFINE_string("out-json", None, "Write the rows as JSON with run_provenance here.")
_OUT_MD = flags.DEFINE_string("out-md", None, "Write the Markdown table here.")
_REPEATS = {1: 50, 256: 9}


def ort_static(fp32: Path, cal) -> bytes:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(fp32), str(out), quantize.calibration_reader(cal, 32), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return out.read_bytes()


def nncf_accuracy_control(fp32: Path, cal, val, budgets: gate.Budgets, residual) -> bytes:
    import nncf
    import onnx

    names = [i.name for i in calibration.graph_inputs(fp32)]

    def items(arrays, batch):
        return [{k: arrays[k][i : i + batch] for k in names} for i in range(0, len(arrays[names[0]]), batch)]

    evaluator = auto.Evaluator(runner.session(str(fp32)), val, budgets, residual)

    def validate(model, _data) -> float:
        drop = evaluator(runner.session(model.SerializeToString())).drop
        return 1.0 - (drop if drop is not None else 1.0)

    quantised = nncf.quantize_with_accuracy_control(
        # Validation items of 32 samples: NNCF ranks by per-item metrics, and 512 single-sample
        # items took 2.5 minutes a pass on a patch CNN.
        onnx.load(str(fp32)), nncf.Dataset(items(cal, 1)), nncf.Dataset(items(val, 32)), validate,
        max_drop=budgets.plcc, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(cal[names[0]]))
    return quantised.SerializeToString()


def _row(mid, variant, blob, fp32_bytes, budgets, sess32, soak, meter, residual):
    """One variant judged exactly as the gate judges it (tinyq.gate.judge on the soak fixture)."""
    sess8 = runner.session(blob)
    result, _ = gate.judge(mid, "fp32", variant, sess32, sess8, budgets, real=soak, residual=residual)
    timing = meter(sess8)
    return {
        "id": mid, "variant": variant, "fp32_bytes": fp32_bytes, "int8_bytes": len(blob),
        "soak_drop": result.worst_drop, "budget": budgets.plcc, "within_budget": result.passed,
        "task_fp32": result.task.get("fp32", {}), "task_int8": result.task.get("int8", {}), "unfused_ops": auto.fusion(blob),
        "latency_ms": {str(b): {"fp32": t.fp32_ms, "int8": t.int8_ms, "speedup": t.speedup} for b, t in timing.items()},
    }


def _feeds(sess, arrays):
    return {i.name: arrays[i.name] for i in sess.get_inputs()}


_TASK = (("psnr_gain_db", "PSNR gain {:+.4f} dB"), ("plcc", "PLCC {:.5f}"))


def _task_text(task):
    return next((fmt.format(task[k]) for k, fmt in _TASK if k in task), "")


def _line(r):
    drop = "n/a" if r["soak_drop"] is None else f"{r['soak_drop']:.2e}"
    lat = r["latency_ms"]
    speed = " | ".join(f"{lat[b]['speedup']:.2f}" if b in lat else "" for b in ("1", "256"))
    return (f"| {r['id']} | {r['variant']} | {r['int8_bytes']} | x{r['fp32_bytes'] / r['int8_bytes']:.2f} | {drop} | "
            f"{'yes' if r['within_budget'] else '**no**'} | {_task_text(r['task_fp32'])} → {_task_text(r['task_int8'])} | "
            f"{len(r['unfused_ops'])} | {speed} |")


HEADER = ("| model | variant | int8 B | fp32/int8 size | soak drop | within budget | task metric fp32 → int8 | unfused ops "
          "| ×fp32 speed b1 | ×fp32 speed b256 |\n|---|---|---|---|---|---|---|---|---|---|")


def _variants(entry, reg, budgets, residual):
    model, _ = quantize.load_for_quantization(entry.onnx)
    inputs = calibration.graph_inputs(model)
    cal = calibration.load_npz(calibration.calibration_path(reg.root, entry.id), inputs)
    val = calibration.load_npz(calibration.validation_path(reg.root, entry.id), inputs, (calibration.TARGET_KEY,))
    return {"tinyq": entry.int8_onnx.read_bytes(), "ort": ort_static(entry.onnx, cal),
            "nncf": nncf_accuracy_control(entry.onnx, cal, val, budgets, residual)}


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    reg_path = cli.workspace_dir() / registry.DEFAULT_REGISTRY
    reg = cli.load_valid_registry(reg_path)
    try:
        entries = [reg.get(m) for m in _MODELS.value] if _MODELS.value else reg.quantised()
    except KeyError as e:
        raise cli.UsageError(str(e.args[0])) from None
    rows = []
    print(HEADER, flush=True)
    for entry in entries:
        budgets = gate.Budgets.of_entry(entry)
        sess32 = runner.session(str(entry.onnx))
        residual = gate.residuals_of_entry(entry)
        variants = _variants(entry, reg, budgets, residual)  # all selection happens before the soak fixture is read
        soak = calibration.load_npz(calibration.fixture_path(reg.root, entry.id), calibration.graph_inputs(entry.onnx),
                                    (calibration.TARGET_KEY,))
        meter = auto.LatencyMeter(sess32, _feeds(sess32, soak), _REPEATS)
        fp32_bytes = quantize.model_bytes_on_disk(entry.onnx)
        for variant, blob in variants.items():
            rows.append(_row(entry.id, variant, blob, fp32_bytes, budgets, sess32, soak, meter, residual))
            print(_line(rows[-1]), flush=True)
    table = HEADER + "\n" + "\n".join(_line(r) for r in rows) + "\n"
    if _OUT_MD.value:
        atomic_write_bytes(cli.resolve_user_path(_OUT_MD.value), table.encode())
    if _OUT_JSON.value:
        provenance.write_report(cli.resolve_user_path(_OUT_JSON.value), {
            "schema": "tinyq-bench-peers-v1", "rows": rows,
            "latency": {"threads": 1, "clock": "calling thread's CPU time", "repeats": {str(k): v for k, v in _REPEATS.items()}},
            "run_provenance": provenance.absl_provenance(tool="bench_peers", main_module=sys.modules[__name__],
                                                         inputs=[(reg_path, "registry")]),
        })
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
