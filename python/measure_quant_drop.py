"""The accuracy gate: fp32 against int8 on real and synthetic inputs, against a per-model budget.

Usage: bazel run //python:measure_quant_drop -- --all | --id ID [--int8 B] | --fp32 A.onnx --int8 B.onnx
           [--budget X] [--out-json R] [--out-md R] [--plots-dir D] [--input-shape NAME=d0,d1,...]

--all gates every non-fp32 registry model, --id one of them (optionally against another int8
file, e.g. a fresh build), --fp32/--int8 a pair outside the registry. Registry models are fed
their soak fixture and the seed-0 synthetic set; foreign pairs the synthetic set, sized by
--input-shape where the graph leaves a dimension open. Exit codes: 0 every model within budget,
1 any model over budget (or with NaN/inf output), 2 error (missing file, bad shapes, a session
that fails to load).
"""

import sys

from absl import flags

from tinyq import calibration, cli, gate, provenance, registry
from tinyq.fileio import atomic_write_bytes

_ALL = flags.DEFINE_bool("all", False, "Gate every non-fp32 model in the registry.")
_ID = flags.DEFINE_string("id", None, "Gate one registry model.")
_FP32 = flags.DEFINE_string("fp32", None, "fp32 model outside the registry (with --int8).")
_INT8 = flags.DEFINE_string("int8", None, "int8 model: with --fp32, or to gate --id against another file.")
_BUDGET = flags.DEFINE_float("budget", None, "Drop budget (default: the registry's per-model value, else 0.01).", lower_bound=0)
_OUT_JSON = flags.DEFINE_string("out-json", None, "Write the tinyq-quant-gate-report-v1 JSON report here.")
_OUT_MD = flags.DEFINE_string("out-md", None, "Write the Markdown table here.")
_PLOTS = flags.DEFINE_string("plots-dir", None, "Scatter plots <id>.png here (default: beside --out-json or --out-md).")
_SHAPES = flags.DEFINE_multi_string("input-shape", [], "NAME=d0,d1,... for a foreign model's dynamic dimensions.")
_ATOL = flags.DEFINE_float("constant-atol", gate.DEFAULT_CONSTANT_ATOL, "Worst |delta| allowed for a constant output.")
_LATENCY = flags.DEFINE_bool("latency", True, "Measure fp32 and int8 latency at batch 1 and 256 (informs, never gates).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")


def _plots_dir():
    if _PLOTS.value:
        return cli.resolve_user_path(_PLOTS.value)
    for value in (_OUT_JSON.value, _OUT_MD.value):
        if value:
            return cli.resolve_user_path(value).parent
    return None


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    modes = sum([bool(_ALL.value), bool(_ID.value), bool(_FP32.value)])
    if modes != 1:
        raise cli.UsageError("give exactly one of --all, --id ID, or --fp32 A.onnx --int8 B.onnx")
    if _FP32.value and not _INT8.value:
        raise cli.UsageError("--fp32 needs --int8: the two are given together")
    if _ALL.value and _INT8.value:
        raise cli.UsageError("--int8 goes with --id or --fp32, not --all")
    try:
        shapes = gate.parse_input_shapes(_SHAPES.value)
    except gate.GateError as e:
        raise cli.UsageError(str(e)) from None
    plots = _plots_dir()
    if plots:
        plots.mkdir(parents=True, exist_ok=True)

    jobs = []  # (id, fp32, int8, budget, kind, fixture path)
    reg_path = None
    if _FP32.value:
        fp32, int8 = cli.resolve_user_path(_FP32.value), cli.resolve_user_path(_INT8.value)
        jobs.append((fp32.name[: -len(".onnx")] if fp32.name.endswith(".onnx") else fp32.name, fp32, int8,
                     _BUDGET.value if _BUDGET.value is not None else registry.DEFAULT_BUDGET_PLCC, None, None))
    else:
        reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
        try:
            reg, _ = registry.check(reg_path)
        except registry.RegistryReadError as e:
            raise cli.UsageError(str(e)) from None
        if reg is None:
            raise cli.UsageError(f"{reg_path} is invalid; run //python:validate_registry")
        try:
            entries = reg.quantised() if _ALL.value else [reg.get(_ID.value)]
        except KeyError as e:
            raise cli.UsageError(str(e.args[0])) from None
        for e in entries:
            if not e.quantised and not _INT8.value:
                raise cli.UsageError(f"{e.id} is fp32 in {reg_path}; there is no int8 model to gate (pass --int8 B.onnx)")
            int8 = cli.resolve_user_path(_INT8.value) if _INT8.value else e.int8_onnx
            budget = _BUDGET.value if _BUDGET.value is not None else e.budget_plcc
            jobs.append((e.id, e.onnx, int8, budget, e.kind, calibration.fixture_path(reg.root, e.id)))
        if not jobs:
            raise cli.UsageError(f"{reg_path}: no quantised model to gate")

    results = []
    for mid, fp32, int8, budget, kind, fixture_path in jobs:
        try:
            fixture = None
            if fixture_path is not None:
                inputs = calibration.graph_inputs(fp32) if fp32.is_file() else []
                try:
                    fixture = calibration.load_npz(fixture_path, inputs, (calibration.TARGET_KEY,))
                except calibration.CalibrationError as e:
                    raise gate.GateError(f"{mid}: soak fixture unusable: {e}") from None
            r = gate.gate_model(mid, fp32, int8, budget, kind=kind, fixture=fixture, input_shapes=shapes,
                                constant_atol=_ATOL.value, latency=_LATENCY.value,
                                plot=plots / f"{mid}.png" if plots else None)
        except gate.GateError as e:
            raise cli.UsageError(str(e)) from None
        results.append(r)
        verdict = "PASS" if r.passed else "FAIL"
        worst = "n/a" if r.worst_drop is None else f"{r.worst_drop:.3e}"
        print(f"[{verdict}] {mid}: worst drop {worst} (budget {budget:g})")
        for s in r.sets:
            for o in s.outputs:
                if not o.passed:
                    print(f"    {s.input_set} output {o.name!r}: {o.reason}")

    table = gate.markdown(results)
    print(table, end="")
    gate_pass = all(r.passed for r in results)
    if _OUT_MD.value:
        atomic_write_bytes(cli.resolve_user_path(_OUT_MD.value), table.encode())
    if _OUT_JSON.value:
        inputs = [(r.fp32, "fp32_model") for r in results] + [(r.int8, "int8_model") for r in results]
        if reg_path:
            inputs.append((reg_path, "registry"))
        provenance.write_report(cli.resolve_user_path(_OUT_JSON.value), {
            "schema": "tinyq-quant-gate-report-v1",
            "gate_pass": gate_pass,
            "models": [gate.as_row(r) for r in results],
            "synthetic_set": {"samples": gate.SYNTHETIC_SAMPLES, "seed": gate.SYNTHETIC_SEED, "distribution": "uniform [0, 1)"},
            "run_provenance": provenance.absl_provenance(tool="measure_quant_drop", main_module=sys.modules[__name__], inputs=inputs),
        })
    return cli.EXIT_OK if gate_pass else cli.EXIT_FAIL


if __name__ == "__main__":
    cli.run(main)
