"""A user's small CNN through `ptq_auto --output`, end to end, and what its artefact gives.

Usage: tools/bazel run //python:bench_user_cnn -- --out-dir DIR [--budget 0.01]

Makes what a user brings: a 1-channel digits classifier (scikit-learn's 8x8 digits upsampled to
32x32; Conv(1->16)-MaxPool-Conv(16->32)-MaxPool-Conv(32->32)-mean-Linear, tinyq_testing.testmodels),
fitted with torch and exported by its default exporter (dynamo=True, dynamic batch), with a train
split (calibration), a val split (validation) and a held-out soak split. Then runs, as a user
would, `ptq_auto --fp32 ... --output DIR/digits_cnn.int8.onnx`, and measures its artefact
against fp32 on the soak split, which ptq_auto never saw: the gate's drop, top-1 accuracy, and
speed (tinyq.search.latency.LatencyMeter: runs interleaved, one thread, medians of the calling thread's CPU
time), next to the same recipe built without its rewrites. Prints a Markdown table; --out-json
writes it with run_provenance.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from absl import flags, logging

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_npz
from tinyq.judge import gate
from tinyq.model import runner
from tinyq.search import latency
from tinyq_testing import testmodels

_OUT_DIR = flags.DEFINE_string("out-dir", None, "Directory for the model, its data and ptq_auto's outputs.", required=True)
_BUDGET = flags.DEFINE_float("budget", 0.01, "ptq_auto's drop budget.", lower_bound=0)
_MIN_TIMED = flags.DEFINE_float("min-timed-s", 5.0, "Repeat each batch size until fp32's runs add up to this many "
                                "seconds of CPU time (tinyq.search.latency.LatencyMeter).", lower_bound=0)
_OUT_JSON = flags.DEFINE_string("out-json", None, "Write the rows as JSON with run_provenance here.")
TOOLS = Path.cwd() / "python"  # bazel run's runfiles
_REPEATS = {1: 200, 256: 21}


def make_user_model(out: Path):
    """(model path, calibration path, validation path, soak arrays with labels)."""
    data = testmodels.digits()
    net = testmodels.digits_cnn(data["train"])
    model = testmodels.export_torch(net, {"input": data["train"][0][:2]}, ["logits"], out / "digits_cnn.onnx", dynamo=True,
                                    dynamic_batch=True)
    atomic_write_npz(out / "train.npz", {"input": data["train"][0]})
    atomic_write_npz(out / "val.npz", {"input": data["val"][0]})
    return model, out / "train.npz", out / "val.npz", data["soak"]


def _tool(name, *args):
    r = subprocess.run([str(TOOLS / name), *map(str, args)], capture_output=True, text=True)
    print(r.stdout, end="", flush=True)
    if r.returncode != 0:
        raise cli.UsageError(f"{name} exited {r.returncode}: {r.stderr.strip()[-2000:]}")


def _without_rewrites(model, cal, recipe, out: Path) -> Path:
    path = out / "digits_cnn.unrewritten.int8.onnx"
    _tool("ptq_static", model, f"--calibration={cal}", f"--output={path}",
          *[a for a in recipe["args"] if not a.startswith("--rewrite")])
    return path


def _row(label, path, sess32, soak, meter):
    sess8 = runner.session(path.read_bytes())
    result, _ = gate.judge("digits_cnn", "fp32", label, sess32, sess8, gate.Budgets(_BUDGET.value), real={"input": soak[0]})
    top1 = float((sess8.run(None, {"input": soak[0]})[0].argmax(1) == soak[1]).mean())
    timing = meter(sess8)
    return {"variant": label, "int8_bytes": path.stat().st_size, "soak_drop": result.worst_drop, "within_budget": result.passed,
            "top1_int8": top1, "latency_ms": {str(b): {"fp32": t.fp32_ms, "int8": t.int8_ms, "speedup": t.speedup}
                                             for b, t in timing.items()}}


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # torch's exporter logs every graph pass at INFO
    out = cli.resolve_user_path(_OUT_DIR.value)
    if out.exists() and not out.is_dir():
        raise cli.UsageError(f"--out-dir {out} is a file; pass a directory (it is created when missing)")
    cli.guard_flags({"--out-json": _OUT_JSON.value})
    out.mkdir(parents=True, exist_ok=True)
    model, cal, val, soak = make_user_model(out)
    artefact = out / "digits_cnn.int8.onnx"
    _tool("ptq_auto", "--fp32", model, "--calibration", cal, "--validation", val, "--budget", _BUDGET.value, "--output", artefact)
    recipe = json.loads((out / "digits_cnn.int8.recipe.json").read_text())
    if recipe["mode"] == "fp32":
        raise cli.UsageError(f"ptq_auto kept the model fp32: {json.loads((out / 'digits_cnn.int8.auto.json').read_text())['choice']['reason']}")
    sess32 = runner.session(str(model))
    meter = latency.LatencyMeter(sess32, {"input": soak[0]}, _REPEATS, _MIN_TIMED.value)
    top1_fp32 = float((sess32.run(None, {"input": soak[0]})[0].argmax(1) == soak[1]).mean())
    variants = {f"ptq_auto ({recipe['encoding']})": artefact}
    if recipe.get("rewrites"):
        variants["same recipe without rewrites"] = _without_rewrites(model, cal, recipe, out)
    rows = [_row(label, path, sess32, soak, meter) for label, path in variants.items()]
    print(f"\nfp32 top-1 on the soak split: {top1_fp32:.3f}\n")
    print("| variant | int8 B | soak drop | within budget | top-1 | ×fp32 speed b1 | ×fp32 speed b256 |\n|---|---|---|---|---|---|---|")
    for r in rows:
        lat = r["latency_ms"]
        print(f"| {r['variant']} | {r['int8_bytes']} | {r['soak_drop']:.2e} | {'yes' if r['within_budget'] else '**no**'} | "
              f"{r['top1_int8']:.3f} | {lat['1']['speedup']:.2f} | {lat['256']['speedup']:.2f} |")
    if _OUT_JSON.value:
        provenance.write_report(cli.resolve_user_path(_OUT_JSON.value), {
            "schema": "tinyq-bench-user-cnn-v1", "recipe": recipe, "top1_fp32": top1_fp32, "rows": rows,
            "latency": latency.settings(_REPEATS, _MIN_TIMED.value),
            "run_provenance": provenance.absl_provenance(tool="bench_user_cnn", main_module=sys.modules[__name__],
                                                         inputs=[(model, "fp32_model")]),
        })
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
