"""The accuracy gate: fp32 against int8 on real data, against a per-model budget.

Usage: bazel run //python:measure_quant_drop -- --all | --id ID [--int8 B] | --fp32 A.onnx --int8 B.onnx [--data X.npz]
           [--budget X] [--synthetic-budget X] [--task-budget X] [--out-json R] [--out-md R] [--plots-dir D]
           [--input-shape NAME=d0,d1,...] [--[no]latency]

--all gates every non-fp32 registry model, --id one of them (optionally against another int8
file, e.g. a fresh build), --fp32/--int8 a pair outside the registry. The budget is judged on real
data: a registry model's soak fixture, or --data (one [N, ...] array per ONNX input, plus an
optional `target` with the ground truth for the task metric). The seed-0 uniform-noise set is a
stress check beside it: it must stay finite, and its drop is judged only against
--synthetic-budget (or the registry's quant_synthetic_budget_plcc). Without real data the verdict
rests on the synthetic set and says so (`judged_on: synthetic`). Latency is on by default for
registry models and off for a foreign pair; it never changes the exit code.
--speed-gate times every artefact meant for speed against its fp32 model on the machine at hand.
Exit codes: 0 every model within budget, 1 any model over budget (or with NaN/inf output, or a
filter that loses its gain), 2 error (missing file, bad data or shapes, a session that fails),
7 (--speed-gate, accuracy within budget) an artefact meant for speed is slower than fp32 beyond
the noise margin.
"""

import sys

from absl import flags

from tinyq import auto, calibration, cli, gate, provenance, registry
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
_DATA = flags.DEFINE_string("data", None, "Real data (.npz: one array per ONNX input, optional `target`) to judge on; "
                            "replaces a registry model's soak fixture.")
_SYNTH_BUDGET = flags.DEFINE_float("synthetic-budget", None, "Budget for the synthetic stress set (default: the registry's "
                                   "quant_synthetic_budget_plcc, else finiteness only).", lower_bound=0)
_TASK_BUDGET = flags.DEFINE_float("task-budget", None, "Share of a filter's PSNR gain the int8 may lose (default: the "
                                  f"registry's quant_task_budget, else {gate.DEFAULT_TASK_BUDGET:g}).", lower_bound=0, upper_bound=1)
_ATOL = flags.DEFINE_float("constant-atol", gate.DEFAULT_CONSTANT_ATOL, "Worst |delta| allowed for a constant output.")
_LATENCY = flags.DEFINE_bool("latency", None, "Measure fp32 and int8 latency at batch 1 and 256 (informs, never gates; "
                             "default: on for registry models, off for --fp32/--int8).")
_SPEED_GATE = flags.DEFINE_bool("speed-gate", False, "Also time every artefact meant for speed (registry quant_purpose "
                                 "speed; a --fp32/--int8 pair always) against fp32, interleaved on one thread; exit 7 when "
                                 "one is slower than fp32 beyond the noise margin.")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")


def _plots_dir():
    if _PLOTS.value:
        return cli.resolve_user_path(_PLOTS.value)
    for value in (_OUT_JSON.value, _OUT_MD.value):
        if value:
            return cli.resolve_user_path(value).parent
    return None


def _check_flags(argv) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    modes = sum([bool(_ALL.value), bool(_ID.value), bool(_FP32.value)])
    if modes != 1:
        raise cli.UsageError("give exactly one of --all, --id ID, or --fp32 A.onnx --int8 B.onnx")
    if _FP32.value and not _INT8.value:
        raise cli.UsageError("--fp32 needs --int8: the two are given together")
    if _ALL.value and (_INT8.value or _DATA.value):
        raise cli.UsageError("--int8 and --data go with --id or --fp32, not --all")


def _budgets(entry=None) -> gate.Budgets:
    base = gate.Budgets.of_entry(entry) if entry is not None else gate.Budgets(registry.DEFAULT_BUDGET_PLCC)
    return base.overridden(_BUDGET.value, _SYNTH_BUDGET.value, _TASK_BUDGET.value)


def _jobs():
    """(registry path or None, [(id, fp32, int8, budgets, real data path or None, its label, purpose)])."""
    data = cli.resolve_user_path(_DATA.value) if _DATA.value else None
    if _FP32.value:
        fp32, int8 = cli.resolve_user_path(_FP32.value), cli.resolve_user_path(_INT8.value)
        return None, [(fp32.name.removesuffix(".onnx"), fp32, int8, _budgets(), data, "data", "speed")]
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
    jobs = []
    for e in entries:
        if not e.quantised and not _INT8.value:
            raise cli.UsageError(f"{e.id} is fp32 in {reg_path}; there is no int8 model to gate (pass --int8 B.onnx)")
        int8 = cli.resolve_user_path(_INT8.value) if _INT8.value else e.int8_onnx
        real, label = (data, "data") if data else (calibration.fixture_path(reg.root, e.id), "soak")
        jobs.append((e.id, e.onnx, int8, _budgets(e), real, label, e.raw.get("quant_purpose")))
    if not jobs:
        raise cli.UsageError(f"{reg_path}: no quantised model to gate")
    return reg_path, jobs


def _load_real(model_id, fp32, path, label):
    if path is None:
        return None
    inputs = calibration.graph_inputs(fp32) if fp32.is_file() else []
    what = "soak fixture" if label == "soak" else "--data"
    try:
        return calibration.load_npz(path, inputs, (calibration.TARGET_KEY,))
    except calibration.CalibrationError as e:
        fix = " (register_model writes it; see docs/user-guide.md)" if label == "soak" else ""
        raise cli.UsageError(f"{model_id}: {what} unusable{fix}:\n{e}") from None
    except Exception as e:  # onnx cannot parse the fp32 model
        raise cli.UsageError(f"{model_id}: cannot read the inputs of {fp32}: {e}") from None


EXIT_SLOWER = 7


def _speed_ok(model_id, fp32, int8, real, shapes) -> bool:
    """Times int8 against fp32 (tinyq.auto.LatencyMeter: interleaved, one thread, medians)."""
    sess32, sess8 = gate.session(str(fp32)), gate.session(str(int8))
    feeds = {i.name: real[i.name] for i in sess32.get_inputs()} if real is not None else \
        gate.synthetic_inputs(sess32, model_id, {}, shapes)
    timing = auto.LatencyMeter(sess32, feeds, {1: 50, 256: 9})(sess8)
    margin = auto.noise_margin(timing.values())
    ok = True
    for b, t in sorted(timing.items()):
        fast = t.int8_ms <= t.fp32_ms * (1 + margin)
        ok = ok and fast
        print(f"    speed: batch {b}: fp32 {t.fp32_ms:.3f} ms, int8 {t.int8_ms:.3f} ms, x{t.speedup:.2f} "
              f"({'ok' if fast else f'SLOWER than fp32 beyond the {margin:.0%} margin'})")
    return ok


def _print_verdict(r: gate.ModelResult) -> None:
    verdict = "PASS" if r.passed else "FAIL"
    worst = "n/a" if r.worst_drop is None else f"{r.worst_drop:.3e}"
    on = {"synthetic": "SYNTHETIC DATA ONLY", "soak": "the soak fixture", "data": "the --data set"}[r.judged_on]
    print(f"[{verdict}] {r.id}: worst drop {worst} on {on} (budget {r.budget:g})")
    for s in r.sets:
        for o in s.outputs:
            if not o.passed or o.compared == "skipped":
                print(f"    {s.input_set} output {o.name!r}: {o.reason}")
    if r.task_check is not None:
        print(f"    task: {r.task_check.reason}")
    for note in r.notes:
        print(f"    note: {note}")
    if r.latency_error:
        print(f"    latency not measured: {r.latency_error}")


def _write_reports(results, reg_path, gate_pass) -> None:
    table = gate.markdown(results)
    print(table, end="")
    if _OUT_MD.value:
        atomic_write_bytes(cli.resolve_user_path(_OUT_MD.value), table.encode())
    if _OUT_JSON.value:
        inputs = [(r.fp32, "fp32_model") for r in results] + [(r.int8, "int8_model") for r in results]
        if reg_path:
            inputs.append((reg_path, "registry"))
        if _DATA.value:
            inputs.append((cli.resolve_user_path(_DATA.value), "data"))
        provenance.write_report(cli.resolve_user_path(_OUT_JSON.value), {
            "schema": "tinyq-quant-gate-report-v2",
            "gate_pass": gate_pass,
            "models": [gate.as_row(r) for r in results],
            "synthetic_set": {"samples": gate.SYNTHETIC_SAMPLES, "seed": gate.SYNTHETIC_SEED, "distribution": "uniform [0, 1)"},
            "run_provenance": provenance.absl_provenance(tool="measure_quant_drop", main_module=sys.modules[__name__], inputs=inputs),
        })


def main(argv):
    _check_flags(argv)
    try:
        shapes = gate.parse_input_shapes(_SHAPES.value)
    except gate.GateError as e:
        raise cli.UsageError(str(e)) from None
    plots = _plots_dir()
    if plots:
        plots.mkdir(parents=True, exist_ok=True)
    reg_path, jobs = _jobs()
    latency = _LATENCY.value if _LATENCY.value is not None else not _FP32.value
    results, slower = [], []
    for mid, fp32, int8, budgets, real_path, label, purpose in jobs:
        real = _load_real(mid, fp32, real_path, label)
        try:
            r = gate.gate_model(mid, fp32, int8, budgets, real=real, real_label=label, input_shapes=shapes,
                                constant_atol=_ATOL.value, latency=latency, plot=plots / f"{mid}.png" if plots else None)
        except gate.GateError as e:
            raise cli.UsageError(str(e)) from None
        results.append(r)
        _print_verdict(r)
        if _SPEED_GATE.value and purpose == "speed" and not _speed_ok(mid, fp32, int8, real, shapes):
            slower.append(mid)
    gate_pass = all(r.passed for r in results)
    _write_reports(results, reg_path, gate_pass)
    if not gate_pass:
        return cli.EXIT_FAIL
    return EXIT_SLOWER if slower else cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
