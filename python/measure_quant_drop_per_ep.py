"""The accuracy gate's comparison on every execution provider: ORT CPU (two int8 kernel
variants), ORT CUDA, and OpenVINO's runtime at f32 and f16 precision hints.

Usage: bazel run //python:measure_quant_drop_per_ep -- --out DIR [--eps cpu cuda openvino]
           [--openvino-device CPU|GPU.0] [--extra-fp32 A.onnx ...] [--extra-int8 A.int8.onnx ...]
           [--extra-budget 0.01] [--hw TAG] [--gate]

Every quantised registry model, plus each --extra-fp32 model (with the int8 model given by
--extra-int8 at the same position, else a dynamic-PTQ one made on the fly), is run in fp32 and
int8 on each provider, on its soak fixture and the seed-0 synthetic set; every output is
compared with tinyq.gate's metrics. Writes DIR/results.json (with run_provenance) and
DIR/results.md. A provider that is missing or has no device is a row marked `unavailable`; one
that did not really run the graph (ORT falling back to its CPU provider, OpenVINO running an f16
hint in bf16) is flagged. Without --gate the exit code is always 0; with --gate it is 1 when any
available (model, provider) pair exceeds its budget or gives NaN/inf.
"""

import socket
import sys
import tempfile
from pathlib import Path

from absl import flags

from tinyq import calibration, cli, eps, gate, provenance, quantize, registry
from tinyq.fileio import atomic_write_bytes

_EPS = flags.DEFINE_multi_enum("eps", ["cpu", "cuda", "openvino"], ["cpu", "cuda", "openvino"], "Providers to run.")
_OV_DEVICE = flags.DEFINE_string("openvino-device", "CPU", "OpenVINO device: CPU, GPU.0, ...")
_EXTRA = flags.DEFINE_multi_string("extra-fp32", [], "An fp32 model outside the registry (repeatable).")
_EXTRA_INT8 = flags.DEFINE_multi_string("extra-int8", [], "The int8 model for the --extra-fp32 at the same position.")
_EXTRA_BUDGET = flags.DEFINE_float("extra-budget", registry.DEFAULT_BUDGET_PLCC, "Budget for --extra-fp32 models.", lower_bound=0)
_SHAPES = flags.DEFINE_multi_string("input-shape", [], "NAME=d0,d1,... for an extra model's dynamic dimensions.")
_OUT = flags.DEFINE_string("out", None, "Directory for results.json and results.md.")
_HW = flags.DEFINE_string("hw", None, "Hardware tag for the results (default: the host name and CPU model).")
_GATE = flags.DEFINE_bool("gate", False, "Exit 1 if any available (model, provider) pair is over budget.")
_DISABLE = flags.DEFINE_multi_enum("disable-ep", [], ["cpu", "cuda", "openvino"], "Treat a provider as not installed.")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")


def _models(tmp: Path, shapes):
    """(id, fp32, int8, budget, fixture or None)."""
    reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    reg = cli.load_valid_registry(reg_path)
    out = []
    for e in reg.quantised():
        fixture_path = calibration.fixture_path(reg.root, e.id)
        fixture = calibration.load_npz(fixture_path, calibration.graph_inputs(e.onnx), (calibration.TARGET_KEY,))
        out.append((e.id, e.onnx, e.int8_onnx, e.budget_plcc, fixture))
    if _EXTRA_INT8.value and len(_EXTRA_INT8.value) != len(_EXTRA.value):
        raise cli.UsageError("--extra-int8 needs one entry per --extra-fp32")
    for i, value in enumerate(_EXTRA.value):
        fp32 = cli.resolve_user_path(value)
        if _EXTRA_INT8.value:
            int8 = cli.resolve_user_path(_EXTRA_INT8.value[i])
        else:
            try:
                model, _ = quantize.load_for_quantization(fp32)
                int8 = tmp / f"extra{i}.int8.onnx"
                atomic_write_bytes(int8, quantize.encode(model, "dynamic", False).model_bytes)
            except quantize.QuantizeError as e:
                raise cli.UsageError(str(e)) from None
        out.append((fp32.name.removesuffix(".onnx"), fp32, int8, _EXTRA_BUDGET.value, None))
    return reg_path, out


def _row(model_id, fp32, int8, budget, fixture, variant, shapes):
    row = {"model": model_id, "provider": variant.name, "ep": variant.ep, "description": variant.description,
           "budget": budget, "fp32": str(fp32), "int8": str(int8)}
    try:
        r32 = eps.runner(str(fp32), variant, _OV_DEVICE.value, _DISABLE.value)
        r8 = eps.runner(str(int8), variant, _OV_DEVICE.value, _DISABLE.value)
    except eps.Unavailable as e:
        return {**row, "status": "unavailable", "reason": str(e)}
    except eps.SessionFailed as e:
        return {**row, "status": "error", "reason": str(e)}
    sets = []
    try:
        sample_shapes = {}
        if fixture is not None:
            names = [i.name for i in r32.get_inputs()]
            feeds = {n: fixture[n] for n in names}
            sample_shapes = {n: tuple(v.shape[1:]) for n, v in feeds.items()}
            sets.append(gate.judge_set("soak", r32, r8, feeds, budget, gate.DEFAULT_CONSTANT_ATOL)[0])
        synth = gate.synthetic_inputs(r32, model_id, sample_shapes, shapes)
        sets.append(gate.judge_set("synthetic", r32, r8, synth, budget, gate.DEFAULT_CONSTANT_ATOL)[0])
    except Exception as e:  # a provider that loads but cannot run the graph
        return {**row, "status": "error", "reason": f"{type(e).__name__}: {e}"}
    drops = [o.drop for s in sets for o in s.outputs if o.drop is not None]
    failures = [f"{s.input_set} {o.name}: {o.reason}" for s in sets for o in s.outputs if not o.passed]
    placement = r8.placement
    status = "pass" if all(s.passed for s in sets) else "fail"
    if status == "pass" and (r32.placement.fell_back or placement.fell_back):
        status = "fell-back"  # the numbers are real, but they are not the requested provider's
    return {
        **row,
        "status": status,
        "reason": "; ".join(failures),
        "worst_drop": max(drops) if drops else None,
        "worst_abs_delta": max(o.worst_abs_delta for s in sets for o in s.outputs),
        "ran_on": placement.ran_on,
        "precision": placement.precision,
        "node_placement": placement.nodes,
        "flags": [f"fp32: {f}" for f in r32.placement.flags] + [f"int8: {f}" for f in placement.flags],
        "sets": [{"input_set": s.input_set, "samples": s.samples, "aggregate_drop": s.aggregate_drop, "pass": s.passed,
                  "outputs": [o.__dict__ for o in s.outputs]} for s in sets],
    }


def _markdown(hw, rows):
    lines = [f"Hardware: {hw}", "",
             "| model | provider | status | worst drop | worst \\|Δ\\| | budget | ran on | flags / reason |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        drop = "" if r.get("worst_drop") is None else f"{r['worst_drop']:.3e}"
        delta = "" if r.get("worst_abs_delta") is None else f"{r['worst_abs_delta']:.3g}"
        ran = ", ".join(r.get("ran_on", []))
        if r.get("precision"):
            ran += f" ({r['precision']})"
        notes = "; ".join([*r.get("flags", []), r.get("reason", "")]).strip("; ").replace("|", "\\|")
        lines.append(f"| {r['model']} | {r['provider']} | {r['status']} | {drop} | {delta} | {r['budget']:g} | {ran} | {notes} |")
    return "\n".join(lines) + "\n"


def main(argv):
    # `--eps cpu cuda openvino`: absl takes the first name, the rest arrive as arguments.
    extra_eps = argv[1:]
    unknown = [a for a in extra_eps if a not in eps.VARIANTS]
    if unknown:
        raise cli.UsageError(f"unexpected arguments: {' '.join(unknown)} (providers are: {', '.join(eps.VARIANTS)})")
    requested = list(dict.fromkeys([*_EPS.value, *extra_eps]))
    if not _OUT.value:
        raise cli.UsageError("--out DIR is required")
    out = cli.resolve_user_path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    try:
        shapes = gate.parse_input_shapes(_SHAPES.value)
    except gate.GateError as e:
        raise cli.UsageError(str(e)) from None
    hw = _HW.value or f"{socket.gethostname()} / {provenance.host_facts()['cpu_model']}"
    variants = eps.variants(requested, _OV_DEVICE.value)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinyq_ep_") as tmp:
        reg_path, models = _models(Path(tmp), shapes)
        for model_id, fp32, int8, budget, fixture in models:
            for v in variants:
                row = _row(model_id, fp32, int8, budget, fixture, v, shapes)
                rows.append(row)
                extra = f" ({row['reason']})" if row.get("reason") else ""
                flag = f" [flagged: {'; '.join(row['flags'])}]" if row.get("flags") else ""
                print(f"{model_id:20s} {v.name:28s} {row['status']}{flag}{extra}", flush=True)
        atomic_write_bytes(out / "results.md", _markdown(hw, rows).encode())
        provenance.write_report(out / "results.json", {
            "schema": "tinyq-ep-results-v1",
            "hw": hw,
            "eps": requested,
            "openvino_device": _OV_DEVICE.value,
            "rows": rows,
            "run_provenance": provenance.absl_provenance(
                tool="measure_quant_drop_per_ep", main_module=sys.modules[__name__],
                inputs=[(reg_path, "registry")] + [(m[1], "fp32_model") for m in models if Path(m[1]).is_file()],
                outputs=[(out / "results.md", "results_md")],
            ),
        })
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    over = [r for r in rows if r["status"] in ("fail", "error")]
    return cli.EXIT_FAIL if _GATE.value and over else cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
