"""Whether a depthwise CNN's int8 pays, and why: a MobileNetV2-style CNN through ptq_auto, and where
its int8 time goes, layer type by layer type.

Usage: tools/bazel run //python:bench_depthwise_cnn -- --out-dir DIR [--out-md M.md]

Makes a user's model (tinyq_testing.testmodels.mobilenet_digits: inverted residual blocks with
BatchNorm, ReLU6 and Hardswish, fitted on scikit-learn's digits, exported by torch's legacy
exporter) with its train split (calibration) and val split (validation), runs `ptq_auto --fp32`
as a user would, and prints its verdict with the nearest candidates. Then profiles fp32 against
the static QDQ and weight-only artefacts (tinyq.search.profile: onnxruntime's per-node profile,
one thread, batch 256, runs interleaved) and prints each op type's time in both, and the static
artefact's per-layer cost table (tinyq.search.layer_costs: each layer's fp32 and int8 time, the
slow ones marked, as ptq_auto profiles them before it gives up on speed). The verdict depends on
the CPU: the report names it.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from absl import flags

from tinyq.app import cli
from tinyq.io.fileio import atomic_write_bytes, atomic_write_npz
from tinyq.judge import arithmetic
from tinyq.quant import quantize
from tinyq.search import layer_costs, profile
from tinyq_testing import testmodels

_OUT_DIR = flags.DEFINE_string("out-dir", None, "Directory for the model, its data and ptq_auto's report.", required=True)
_OUT_MD = flags.DEFINE_string("out-md", None, "Also write the Markdown here.")
_BATCH = 256


def _make(out: Path) -> Path:
    data = testmodels.digits()
    net = testmodels.mobilenet_digits(data["train"])
    model = testmodels.export_torch(net, {"input": data["train"][0][:2]}, ["logits"], out / "mobilenet.onnx",
                                    dynamo=False, dynamic_batch=True)
    atomic_write_npz(out / "train.npz", {"input": data["train"][0]})
    atomic_write_npz(out / "val.npz", {"input": data["val"][0], "target": data["val"][1]})
    return model


def _verdict(model: Path, out: Path) -> str:
    report = out / "mobilenet.auto.json"
    r = subprocess.run([str(Path(sys.argv[0]).parent / "ptq_auto"), "--fp32", model, "--calibration", out / "train.npz",
                        "--validation", out / "val.npz", "--report-out", report], capture_output=True, text=True)
    if r.returncode not in (0, 6):
        raise cli.UsageError(f"ptq_auto exited {r.returncode}: {r.stderr[-2000:]}")
    rep = json.loads(report.read_text())
    rows = sorted(rep["candidates"], key=lambda c: c["validation_drop"] if c["validation_drop"] is not None else 9)[:6]
    lines = [f"ptq_auto's verdict: **{rep['choice']['candidate'] or 'fp32'}** ({rep['choice']['reason']})", "",
             "| candidate | validation drop | ×fp32 b1 | ×fp32 b256 | unfused ops |", "|---|---|---|---|---|"]
    for c in rows:
        speed = {b: v["speedup"] for b, v in c["latency_ms"].items()}
        lines.append(f"| {c['candidate']} | {c['validation_drop']:.2e} | {speed.get('1', 0):.2f} | {speed.get('256', 0):.2f} "
                     f"| {', '.join(c['unfused_ops']) or '-'} |")
    return "\n".join(lines) + "\n"


def _layers(model_path: Path, out: Path) -> str:
    model, _ = quantize.load_for_quantization(model_path)
    cal = dict(np.load(out / "train.npz"))
    feeds = {"input": np.resize(np.load(out / "val.npz")["input"], (_BATCH, 1, 32, 32))}
    variants = {"static QDQ (MinMax, per tensor)": quantize.quantize_static_qdq(model, cal),
                "weight-only (per tensor)": quantize.encode(model, "weight_only", False).model_bytes}
    lines = []
    for name, int8 in variants.items():
        b = profile.breakdown(model, int8, feeds)
        ops = sorted(set(b.fp32_ops) | set(b.int8_ops), key=lambda op: -max(b.fp32_ops.get(op, 0), b.int8_ops.get(op, 0)))
        cell = lambda d, op: f"{d[op]:.2f}" if op in d else ""  # noqa: E731
        lines += [f"{name}: fp32 {b.fp32_ms:.1f} ms, int8 {b.int8_ms:.1f} ms at batch {_BATCH} (×{b.speedup:.2f}); "
                  f"quantisation overhead {b.overhead_ms:.1f} ms", "", "| op (onnxruntime's, after fusion) | fp32 ms | int8 ms |",
                  "|---|---|---|"] + [f"| {op} | {cell(b.fp32_ops, op)} | {cell(b.int8_ops, op)} |" for op in ops] + [""]
    costs = layer_costs.layer_costs(model, quantize.quantize_static_qdq(model, cal, compact=False), feeds)
    lines += [f"static QDQ (MinMax, per tensor), layer by layer at batch {_BATCH}:", "", layer_costs.table(costs)]
    return "\n".join(lines)


def main(argv):
    del argv
    out = cli.resolve_user_path(_OUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)
    model = _make(out)
    cpu = arithmetic.host_cpu()
    text = (f"CPU: {cpu.model}, {cpu.int8_isa} (int8 arithmetic: {cpu.native})\n\n" + _verdict(model, out) + "\n"
            + _layers(model, out))
    print(text)
    if _OUT_MD.value:
        atomic_write_bytes(cli.resolve_user_path(_OUT_MD.value), text.encode())
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
