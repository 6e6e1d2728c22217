"""The accuracy gate's comparison on every execution provider: ORT CPU (two int8 kernel
variants), ORT CUDA, and OpenVINO's runtime at f32 and f16 precision hints.

Usage: bazel run //python:measure_quant_drop_per_ep -- --out DIR [--eps cpu cuda openvino] [--id ID]
           [--openvino-device CPU|GPU.0] [--extra-fp32 A.onnx ...] [--extra-int8 A.int8.onnx ...]
           [--extra-data A.npz ...] [--extra-budget 0.01] [--hw TAG] [--gate]

Every quantised registry model (or only --id), plus each --extra-fp32 model (with the int8 model
given by --extra-int8 at the same position, else a dynamic-PTQ one made on the fly, and the real
data given by --extra-data at the same position), is run in fp32 and int8 on each provider and
judged exactly as the gate judges it (tinyq.judge.gate.judge): the budget on real data (the soak
fixture, or --extra-data), the seed-0 synthetic set as a stress check. Extra models are labelled
by their file name. Writes DIR/results.json (with run_provenance) and DIR/results.md, and leaves
no temporary files behind. A provider that is missing or has no device is a row marked
`unavailable`; one that did not really run the graph (ORT falling back to its CPU provider,
OpenVINO running an f16 hint in bf16) is flagged. Without --gate the exit code is always 0; with
--gate it is 1 when any available (model, provider) pair exceeds its budget or gives NaN/inf, and
5 when no pair could be judged at all (e.g. only --eps cuda on a machine without CUDA).
"""

import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

from absl import flags

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_bytes
from tinyq.judge import drops, eps, gate, gate_report
from tinyq.model import calibration
from tinyq.quant import quantize
from tinyq.registry import defaults, layout, registry

EXIT_NOTHING_JUDGED = cli.EXIT_NOT_JUDGED  # --gate, but no (model, provider) pair was judged

_EPS = flags.DEFINE_multi_enum("eps", ["cpu", "cuda", "openvino"], ["cpu", "cuda", "openvino"], "Providers to run.")
_OV_DEVICE = flags.DEFINE_string("openvino-device", "CPU", "OpenVINO device: CPU, GPU.0, ...")
_EXTRA = flags.DEFINE_multi_string("extra-fp32", [], "An fp32 model outside the registry (repeatable).")
_EXTRA_INT8 = flags.DEFINE_multi_string("extra-int8", [], "The int8 model for the --extra-fp32 at the same position.")
_EXTRA_DATA = flags.DEFINE_multi_string("extra-data", [], "Real data (.npz) for the --extra-fp32 at the same position.")
_EXTRA_BUDGET = flags.DEFINE_float("extra-budget", defaults.DEFAULT_BUDGET_PLCC, "Budget for --extra-fp32 models.", lower_bound=0)
_SHAPES = flags.DEFINE_multi_string("input-shape", [], "NAME=d0,d1,... for an extra model's dynamic dimensions.")
_OUT = flags.DEFINE_string("out", None, "Directory for results.json and results.md.")
_HW = flags.DEFINE_string("hw", None, "Hardware tag for the results (default: the host name and CPU model).")
_GATE = flags.DEFINE_bool("gate", False, "Exit 1 if any available (model, provider) pair is over budget.")
_DISABLE = flags.DEFINE_multi_enum("disable-ep", [], ["cpu", "cuda", "openvino"], "Treat a provider as not installed.")
_ID = flags.DEFINE_string("id", None, "Only this registry model.")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")


def _registry_models(reg_path):
    reg = cli.load_valid_registry(reg_path)
    try:
        entries = [reg.get(_ID.value)] if _ID.value else reg.quantised()
    except KeyError as e:
        raise cli.UsageError(str(e.args[0])) from None
    out = []
    for e in entries:
        if not e.quantised:
            raise cli.UsageError(f"{e.id} is fp32 in {reg_path}; there is no int8 model to compare")
        fixture = _load_data(e.id, e.onnx, layout.fixture_path(reg.root, e.id))
        shift_path = layout.shift_path(reg.root, e.id)
        shift = _load_data(e.id, e.onnx, shift_path, ()) if shift_path.is_file() else None
        residual = _residual(e.id, e.onnx, e.raw.get("residual_of"), e.kind)
        out.append(Model(e.id, e.onnx, e.int8_onnx, gate.Budgets.of_entry(e), fixture, "soak", shift, residual))
    return out


@dataclass
class Model:
    label: str
    fp32: Path
    int8: Path
    budgets: gate.Budgets
    real: Optional[dict]
    real_label: str
    shift: Optional[dict] = None
    residual: Dict[str, str] = field(default_factory=dict)


def _residual(model_id, fp32: Path, residual_of, kind) -> Dict[str, str]:
    try:
        return drops.declared_residuals(residual_of, kind, calibration.read_model(fp32))
    except ValueError as e:
        raise cli.UsageError(f"{model_id}: {e}") from None


def _load_data(model_id, fp32, path, extra=(calibration.TARGET_KEY,)):
    try:
        return calibration.load_npz(path, calibration.graph_inputs(fp32), extra)
    except calibration.CalibrationError as e:
        raise cli.UsageError(f"{model_id}: real data unusable:\n{e}") from None


def _label(fp32: Path, taken) -> str:
    """An extra model's label: its file name without .onnx, numbered if another model has it."""
    base = label = fp32.name.removesuffix(".onnx")
    n = 2
    while label in taken:
        label, n = f"{base}-{n}", n + 1
    return label


def _extra_models(tmp: Path, taken):
    for flag in (_EXTRA_INT8, _EXTRA_DATA):
        if flag.value and len(flag.value) != len(_EXTRA.value):
            raise cli.UsageError(f"--{flag.name} needs one entry per --extra-fp32")
    out = []
    for i, value in enumerate(_EXTRA.value):
        fp32 = cli.resolve_user_path(value)
        label = _label(fp32, taken | {m.label for m in out})
        if _EXTRA_INT8.value:
            int8 = cli.resolve_user_path(_EXTRA_INT8.value[i])
        else:
            try:
                model, _ = quantize.load_for_quantization(fp32)
                int8 = tmp / f"extra{i}.int8.onnx"
                atomic_write_bytes(int8, quantize.encode(model, "dynamic", False).model_bytes)
            except quantize.QuantizeError as e:
                raise cli.UsageError(str(e)) from None
        data = _load_data(label, fp32, cli.resolve_user_path(_EXTRA_DATA.value[i])) if _EXTRA_DATA.value else None
        out.append(Model(label, fp32, int8, gate.Budgets(_EXTRA_BUDGET.value), data, "data"))
    return out


def _models(tmp: Path):
    """(registry path, [(label, fp32, int8, budgets, real data or None, its label)])."""
    reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    models = _registry_models(reg_path)
    return reg_path, models + _extra_models(tmp, {m.label for m in models})


def _row(m: Model, variant, shapes):
    row = {"model": m.label, "provider": variant.name, "ep": variant.ep, "description": variant.description,
           "budget": m.budgets.plcc, "fp32": str(m.fp32), "int8": str(m.int8)}
    try:
        gate.check_quantised(m.int8, m.label)
        with eps.runner(str(m.fp32), variant, _OV_DEVICE.value, _DISABLE.value) as r32, \
                eps.runner(str(m.int8), variant, _OV_DEVICE.value, _DISABLE.value) as r8:
            result, _ = gate.judge(m.label, str(m.fp32), str(m.int8), r32, r8, m.budgets, real=m.real,
                                   real_label=m.real_label, shift=m.shift, residual=m.residual, input_shapes=shapes)
            if variant.ep == eps.ORT_CPU:  # both int8 arithmetics a CPU computes (tinyq.judge.arithmetic)
                gate.arithmetic_rows(result, m.int8, r32, m.real, m.shift, m.residual, m.budgets)
            placement32, placement8 = r32.placement, r8.placement
    except eps.Unavailable as e:
        return {**row, "status": "unavailable", "reason": str(e)}
    except eps.SessionFailed as e:
        return {**row, "status": "error", "reason": str(e)}
    except Exception as e:  # a provider that loads but cannot run the graph
        return {**row, "status": "error", "reason": f"{type(e).__name__}: {e}"}
    status = "pass" if result.passed else ("not-judged" if not result.judged else "fail")
    if status == "pass" and (placement32.fell_back or placement8.fell_back):
        status = "fell-back"  # the numbers are real, but they are not the requested provider's
    failures = [f"{s.input_set} {o.name}: {o.reason}" for s in result.sets for o in s.outputs if not o.passed]
    if result.task_check is not None and not result.task_check.passed:
        failures.append(result.task_check.reason)
    report = gate_report.as_row(result)
    deltas = [o.worst_abs_delta for s in result.sets for o in s.outputs if o.worst_abs_delta is not None]
    return {
        **row,
        "status": status,
        "reason": "; ".join(failures + result.notes),
        "judged_on": result.judged_on,
        "worst_drop": result.worst_drop,
        "shift_drop": None if result.set("shift") is None else result.set("shift").drop,
        "worst_abs_delta": max(deltas) if deltas else None,
        "ran_on": placement8.ran_on,
        "precision": placement8.precision,
        "node_placement": placement8.nodes,
        "flags": [f"fp32: {f}" for f in placement32.flags] + [f"int8: {f}" for f in placement8.flags],
        "sets": report["sets"],
        "isa": {s["input_set"]: s["isa"] for s in report["sets"] if s["isa"]},
        "cpu": report["cpu"],
        "task": report["task"],
        "task_check": report["task_check"],
    }


def _isa_text(r) -> str:
    """The judged set's drop in each int8 arithmetic (ORT CPU rows; docs/quantization.md#one-int8-every-cpu)."""
    rows = r.get("isa", {}).get(r.get("judged_on"), {})
    cells = [f"{rows[a]['drop']:.3e}{'' if rows[a]['pass'] else ' FAIL'}" if rows.get(a) and rows[a]["drop"] is not None
             else "" for a in ("exact", "avx2")]
    return " / ".join(cells) if any(cells) else ""


def _markdown(hw, rows):
    lines = [f"Hardware: {hw}", "",
             "| model | provider | status | worst drop | shift drop | exact / avx2 drop | worst \\|Δ\\| | budget | ran on | flags / reason |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        drop = "" if r.get("worst_drop") is None else f"{r['worst_drop']:.3e}"
        shift = "" if r.get("shift_drop") is None else f"{r['shift_drop']:.3e}"
        delta = "" if r.get("worst_abs_delta") is None else f"{r['worst_abs_delta']:.3g}"
        ran = ", ".join(r.get("ran_on", []))
        if r.get("precision"):
            ran += f" ({r['precision']})"
        notes = "; ".join([*r.get("flags", []), r.get("reason", "")]).strip("; ").replace("|", "\\|")
        lines.append(f"| {r['model']} | {r['provider']} | {r['status']} | {drop} | {shift} | {_isa_text(r)} | {delta} | "
                     f"{r['budget']:g} | {ran} | {notes} |")
    return "\n".join(lines) + "\n"


def _exit_code(rows) -> int:
    if not _GATE.value:
        return cli.EXIT_OK
    judged = [r for r in rows if r["status"] in ("pass", "fail", "fell-back")]
    if not judged:
        sys.stderr.write("measure_quant_drop_per_ep: --gate judged nothing: every (model, provider) pair is "
                         "unavailable or errored; see results.md\n")
        return EXIT_NOTHING_JUDGED
    return cli.EXIT_FAIL if any(r["status"] in ("fail", "error", "not-judged") for r in rows) else cli.EXIT_OK


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
    if out.exists() and not out.is_dir():
        raise cli.UsageError(f"--out {out} is a file; pass a directory (it is created when missing)")
    try:
        shapes = gate.parse_input_shapes(_SHAPES.value)
    except gate.GateError as e:
        raise cli.UsageError(str(e)) from None
    hw = _HW.value or f"{socket.gethostname()} / {provenance.host_facts()['cpu_model']}"
    variants = eps.variants(requested, _OV_DEVICE.value)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tinyq_ep_") as tmp:
        reg_path, models = _models(Path(tmp))
        if out.is_dir():
            cli.guard_outputs({"--out (results.md)": out / "results.md", "--out (results.json)": out / "results.json"},
                              [p for m in models for p in (m.fp32, m.int8)], reg_path)
        out.mkdir(parents=True, exist_ok=True)
        for m in models:
            for v in variants:
                row = _row(m, v, shapes)
                rows.append(row)
                extra = f" ({row['reason']})" if row.get("reason") else ""
                flag = f" [flagged: {'; '.join(row['flags'])}]" if row.get("flags") else ""
                print(f"{m.label:20s} {v.name:28s} {row['status']}{flag}{extra}", flush=True)
    atomic_write_bytes(out / "results.md", _markdown(hw, rows).encode())
    provenance.write_report(out / "results.json", {
        "schema": "tinyq-ep-results-v2",
        "hw": hw,
        "eps": requested,
        "openvino_device": _OV_DEVICE.value,
        "rows": rows,
        "run_provenance": provenance.absl_provenance(
            tool="measure_quant_drop_per_ep", main_module=sys.modules[__name__],
            inputs=[(reg_path, "registry")] + [(m.fp32, "fp32_model") for m in models if Path(m.fp32).is_file()],
            outputs=[(out / "results.md", "results_md")],
        ),
    })
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return _exit_code(rows)


if __name__ == "__main__":
    cli.run(main)
