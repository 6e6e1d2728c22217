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
  tinyq_unrewritten  where the recipe has kernel-aware rewrites (ptq_static --rewrite): the same
          recipe without them, rebuilt by ptq_static, to show what the rewrites give.
Columns: size, soak drop (the gate's, this CPU's own int8 arithmetic), the soak drop in the avx2
arithmetic (int16 pair sums that saturate: AVX2 and AVX-512 without VNNI; emulated on a seeded
subset where this CPU is exact, tinyq.judge.arithmetic), how many integer layers can saturate by the pair
bound (tinyq.quant.overflow), within budget (in both arithmetics), the task metric on the soak fixture, and
int8 against fp32 latency at batch 1 and 256 (tinyq.search.latency.LatencyMeter: runs interleaved, one
thread, medians of the calling thread's CPU time).

Then, for every tinyq variant, where the time goes at batch 256 (tinyq.search.profile: onnxruntime's
per-node profile, one thread): fp32 and int8 time per op, the share of the int8 time spent in
overhead (quantise/dequantise, layout transposes, the rewrites' Pad and Slice), and the ceiling: the
speed-up if every convolution ran at its trunk's int8 speed.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

from absl import flags

from tinyq.app import cli, provenance, starlark
from tinyq.io.fileio import atomic_write_bytes
from tinyq.judge import gate
from tinyq.model import calibration, loading, runner
from tinyq.quant import fusion, quantize
from tinyq.registry import layout, registry
from tinyq.search import auto, latency, profile

_MODELS = flags.DEFINE_list("models", None, "Model ids (default: every quantised registry model).")
_MIN_TIMED = flags.DEFINE_float("min-timed-s", 5.0, "Repeat each batch size until fp32's runs add up to this many "
                                "seconds of CPU time (tinyq.search.latency.LatencyMeter).", lower_bound=0)
_OUT_JSON = flags.DEFINE_string("out-json", None, "Write the rows as JSON with run_provenance here.")
_OUT_MD = flags.DEFINE_string("out-md", None, "Write the Markdown table here.")
_REPEATS = {1: 50, 256: 9}
PROFILE_BATCH = 256
STATIC = Path.cwd() / "python" / "ptq_static"  # bazel run's runfiles


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
    """One variant judged exactly as the gate judges it (tinyq.judge.gate.judge on the soak fixture)."""
    sess8 = runner.session(blob)
    result, _ = gate.judge(mid, "fp32", variant, sess32, sess8, budgets, real=soak, residual=residual)
    with tempfile.TemporaryDirectory(prefix="tinyq_peer_") as tmp:  # both int8 arithmetics (tinyq.judge.arithmetic)
        (Path(tmp) / "int8.onnx").write_bytes(blob)
        gate.arithmetic_rows(result, Path(tmp) / "int8.onnx", sess32, soak, None, residual, budgets)
    rows = result.set(result.judged_on).isa
    timing = meter(sess8)
    return {
        "id": mid, "variant": variant, "fp32_bytes": fp32_bytes, "int8_bytes": len(blob),
        "soak_drop": result.worst_drop, "budget": budgets.plcc, "within_budget": result.passed,
        "soak_drop_avx2": rows["avx2"].drop, "avx2_how": rows["avx2"].how,
        "can_saturate": result.overflow.get("can_saturate", 0),
        "task_fp32": result.task.get("fp32", {}), "task_int8": result.task.get("int8", {}), "unfused_ops": fusion.fusion(blob),
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
    avx2 = "n/a" if r["soak_drop_avx2"] is None else f"{r['soak_drop_avx2']:.2e}"
    return (f"| {r['id']} | {r['variant']} | {r['int8_bytes']} | x{r['fp32_bytes'] / r['int8_bytes']:.2f} | {drop} | {avx2} | "
            f"{r['can_saturate']} | "
            f"{'yes' if r['within_budget'] else '**no**'} | {_task_text(r['task_fp32'])} → {_task_text(r['task_int8'])} | "
            f"{len(r['unfused_ops'])} | {speed} |")


HEADER = ("| model | variant | int8 B | fp32/int8 size | soak drop | soak drop (avx2) | layers that can saturate | within budget "
          "| task metric fp32 → int8 | unfused ops | ×fp32 speed b1 | ×fp32 speed b256 |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def unrewritten(entry, cal_path: Path, recipe) -> bytes:
    """The recipe without its --rewrite flag, built by ptq_static as //model:<id>_int8 builds it."""
    args = [a for a in recipe["args"] if not a.startswith("--rewrite")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        r = subprocess.run([str(STATIC), str(entry.onnx), f"--calibration={cal_path}", f"--output={out}", *args],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise cli.UsageError(f"ptq_static failed on {entry.id}'s recipe without rewrites: {r.stderr.strip()}")
        return out.read_bytes()


def _variants(entry, model, reg, budgets, residual, recipe):
    inputs = calibration.graph_inputs(model)
    cal_path = layout.calibration_path(reg.root, entry.id)
    cal = calibration.load_npz(cal_path, inputs)
    val = calibration.load_npz(layout.validation_path(reg.root, entry.id), inputs, (calibration.TARGET_KEY,))
    out = {"tinyq": entry.int8_onnx.read_bytes()}
    if any(a.startswith("--rewrite") for a in recipe.get("args", [])):
        out["tinyq_unrewritten"] = unrewritten(entry, cal_path, recipe)
    out.update({"ort": ort_static(entry.onnx, cal), "nncf": nncf_accuracy_control(entry.onnx, cal, val, budgets, residual)})
    return out


def _breakdown_md(mid: str, variant: str, b: profile.Breakdown) -> str:
    ops = sorted(set(b.fp32_ops) | set(b.int8_ops), key=lambda op: -max(b.fp32_ops.get(op, 0), b.int8_ops.get(op, 0)))
    cell = lambda d, op: f"{d[op]:.2f}" if op in d else ""
    ceiling = "n/a" if b.ceiling_speedup is None else f"x{b.ceiling_speedup:.2f}"
    lines = [f"#### {mid} ({variant}), batch 256", "",
             f"fp32 {b.fp32_ms:.1f} ms, int8 {b.int8_ms:.1f} ms (x{b.speedup:.2f} in the profile); overhead "
             f"{b.overhead_ms:.2f} ms ({b.overhead_ms / b.int8_ms:.0%} of int8), kernels {1 - b.overhead_ms / b.int8_ms:.0%}; "
             f"ceiling {ceiling}", "", "| op | fp32 ms | int8 ms |", "|---|---|---|"]
    lines += [f"| {op} | {cell(b.fp32_ops, op)} | {cell(b.int8_ops, op)} |" for op in ops]
    lines += ["", "QLinearConvs in run order (input channels: speed in 10^9 multiply-accumulates per second): " + ", ".join(
        f"{t.input_channels} ch: {t.macs / t.ms / 1e6:.0f}" for t in b.convs)]
    return "\n".join(lines) + "\n"


def _profile_feeds(sess32, soak):
    n = len(next(iter(soak.values())))
    return {i.name: soak[i.name][[k % n for k in range(PROFILE_BATCH)]] for i in sess32.get_inputs()}


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    reg_path = cli.workspace_dir() / registry.DEFAULT_REGISTRY
    cli.guard_flags({"--out-json": _OUT_JSON.value, "--out-md": _OUT_MD.value}, [], reg_path)
    reg = cli.load_valid_registry(reg_path)
    try:
        entries = [reg.get(m) for m in _MODELS.value] if _MODELS.value else reg.quantised()
    except KeyError as e:
        raise cli.UsageError(str(e.args[0])) from None
    recipes = starlark.constant(cli.workspace_dir() / "model" / "zoo.bzl", "ZOO_INT8")
    rows, profiles, sections = [], [], []
    print(HEADER, flush=True)
    for entry in entries:
        budgets = gate.Budgets.of_entry(entry)
        sess32 = runner.session(str(entry.onnx))
        residual = gate.residuals_of_entry(entry)
        recipe = recipes.get(entry.id, {})
        fp32_model = quantize.load_for_quantization(entry.onnx)[0]
        variants = _variants(entry, fp32_model, reg, budgets, residual, recipe)  # all selection happens before the soak fixture is read
        soak = calibration.load_npz(layout.fixture_path(reg.root, entry.id), calibration.graph_inputs(entry.onnx),
                                    (calibration.TARGET_KEY,))
        meter = latency.LatencyMeter(sess32, _feeds(sess32, soak), _REPEATS, _MIN_TIMED.value)
        fp32_bytes = loading.model_bytes_on_disk(entry.onnx)
        for variant, blob in variants.items():
            rows.append(_row(entry.id, variant, blob, fp32_bytes, budgets, sess32, soak, meter, residual))
            print(_line(rows[-1]), flush=True)
        for variant in (v for v in variants if v.startswith("tinyq") and recipe.get("purpose") == "speed"):
            b = profile.breakdown(fp32_model, variants[variant], _profile_feeds(sess32, soak))
            profiles.append({"id": entry.id, "variant": variant, "batch": PROFILE_BATCH, **b.as_dict()})
            sections.append(_breakdown_md(entry.id, variant, b))
            print(sections[-1], flush=True)
    table = HEADER + "\n" + "\n".join(_line(r) for r in rows) + "\n" + "".join("\n" + s for s in sections)
    if _OUT_MD.value:
        atomic_write_bytes(cli.resolve_user_path(_OUT_MD.value), table.encode())
    if _OUT_JSON.value:
        provenance.write_report(cli.resolve_user_path(_OUT_JSON.value), {
            "schema": "tinyq-bench-peers-v1", "rows": rows, "profiles": profiles,
            "latency": latency.settings(_REPEATS, _MIN_TIMED.value),
            "run_provenance": provenance.absl_provenance(tool="bench_peers", main_module=sys.modules[__name__],
                                                         inputs=[(reg_path, "registry")]),
        })
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
