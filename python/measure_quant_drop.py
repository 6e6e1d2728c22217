"""The accuracy gate: fp32 against int8 on real data, against a per-model budget.

Usage: bazel run //python:measure_quant_drop -- --all | --id ID [--int8 B] | --fp32 A.onnx --int8 B.onnx [--data X.npz]
           [--shift-data S.npz] [--residual-of [OUTPUT=]INPUT] [--budget X] [--shift-budget X]
           [--synthetic-budget X] [--task-budget X] [--out-json R] [--out-md R] [--plots-dir D]
           [--input-shape NAME=d0,d1,...] [--[no]latency]

--all gates every non-fp32 registry model, --id one of them (optionally against another int8
file, e.g. a fresh build), --fp32/--int8 a pair outside the registry. The budget is judged on real
data: a registry model's soak fixture, or --data (one [N, ...] array per ONNX input, plus an
optional `target` with the ground truth for the task metric). The shift set (a registry model's
model/tiny/shift/<id>.shift.npz, or --shift-data) is judged against the shift budget
(quant_shift_budget_plcc, default 10x the budget). Every output is judged on itself, except one
declared a residual (a filter's, the registry's residual_of, --residual-of), judged on output -
input. The seed-0 uniform-noise set is a stress check beside it: it must stay finite, and its drop is judged only against
--synthetic-budget (or the registry's quant_synthetic_budget_plcc). Without real data the verdict
rests on the synthetic set and says so (`judged_on: synthetic`). Latency is on by default for
registry models and off for a foreign pair; it never changes the exit code.
Every real set is judged in both int8 arithmetics a CPU can compute (tinyq.judge.arithmetic): "exact"
(int32 accumulation: VNNI, AMX, SSE4.1, arm64) and "avx2" (int16 pair sums that saturate: AVX2,
AVX-512 without VNNI), each natively where this CPU computes it, else through the session option
(exact) or under qemu-x86_64 -cpu Haswell-v4 on a seeded subset (avx2); a model passes only where
both pass. The JSON report's sets carry `isa: {"exact": {...}, "avx2": {...}}`, with each row's
drop, verdict and how it was computed; `cpu` names the judging CPU and `overflow` each integer
layer's int16 pair bound (tinyq.quant.overflow).
--speed-gate times every artefact meant for speed against its fp32 model on the machine at hand.
Exit codes: 0 every model within budget, 1 any model over budget (or with NaN/inf output, or a
filter that loses its gain), 2 error (missing file, bad data or shapes, a session that fails),
5 no output of some model could be judged (all skipped, e.g. ZipMap, or a single value), 7 (--speed-gate, accuracy within budget) an artefact meant for speed is slower than fp32 beyond
the noise margin.
"""

import sys

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from absl import flags

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_bytes
from tinyq.judge import drops, gate, gate_report, verdicts
from tinyq.model import calibration, runner
from tinyq.registry import defaults, layout, registry
from tinyq.search import auto, latency

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
                                  f"registry's quant_task_budget, else {verdicts.DEFAULT_TASK_BUDGET:g}).", lower_bound=0, upper_bound=1)
_SHIFT = flags.DEFINE_string("shift-data", None, "Shift set (.npz: one array per ONNX input) judged against the shift "
                             "budget; replaces a registry model's model/tiny/shift/<id>.shift.npz.")
_SHIFT_BUDGET = flags.DEFINE_float("shift-budget", None, "Budget on the shift set (default: the registry's "
                                   f"quant_shift_budget_plcc, else {verdicts.SHIFT_BUDGET_FACTOR:g}x the budget).", lower_bound=0)
_RESIDUAL_OF = flags.DEFINE_multi_string("residual-of", [], "INPUT (the first output restores it) or OUTPUT=INPUT: an "
                                         "output judged on its residual (default: a registry model's kind filter or "
                                         "residual_of; every other output is judged on itself).")
_LATENCY = flags.DEFINE_bool("latency", None, "Measure fp32 and int8 latency at batch 1 and 256 (informs, never gates; "
                             "default: on for registry models, off for --fp32/--int8).")
_SPEED_GATE = flags.DEFINE_bool("speed-gate", False, "Also time every artefact meant for speed (registry quant_purpose "
                                 "speed; a --fp32/--int8 pair always) against fp32, interleaved on one thread; exit 7 when "
                                 "one is slower than fp32 beyond the noise margin.")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")
cli.finite(_BUDGET, _SYNTH_BUDGET, _TASK_BUDGET, _SHIFT_BUDGET)


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
    if _ALL.value and (_INT8.value or _DATA.value or _SHIFT.value or _RESIDUAL_OF.value):
        raise cli.UsageError("--int8, --data, --shift-data and --residual-of go with --id or --fp32, not --all")


def _budgets(entry=None) -> gate.Budgets:
    base = gate.Budgets.of_entry(entry) if entry is not None else gate.Budgets(defaults.DEFAULT_BUDGET_PLCC)
    return base.overridden(_BUDGET.value, _SYNTH_BUDGET.value, _TASK_BUDGET.value, _SHIFT_BUDGET.value)


@dataclass
class Job:
    id: str
    fp32: Path
    int8: Path
    budgets: gate.Budgets
    real: Optional[Path]  # the real data the budget is judged on
    label: str  # "soak" or "data"
    shift: Optional[Path]
    declared: Tuple[object, Optional[str]]  # (residual_of, kind)
    purpose: Optional[str]


def _flag_residual():
    try:
        return drops.parse_residual_flags(_RESIDUAL_OF.value)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None


def _jobs():
    """(registry path or None, [Job]), or (registry path, why there is nothing to gate) when the
    registry says the model (every model, with --all) is fp32."""
    data = cli.resolve_user_path(_DATA.value) if _DATA.value else None
    shift = cli.resolve_user_path(_SHIFT.value) if _SHIFT.value else None
    if _FP32.value:
        fp32, int8 = cli.resolve_user_path(_FP32.value), cli.resolve_user_path(_INT8.value)
        return None, [Job(fp32.name.removesuffix(".onnx"), fp32, int8, _budgets(), data, "data", shift,
                          (_flag_residual(), None), "speed")]
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
            return reg_path, f"{e.id} is fp32 in {reg_path} (quant_mode fp32): there is no int8 to gate; the verdict is fp32"
        int8 = cli.resolve_user_path(_INT8.value) if _INT8.value else e.int8_onnx
        if _INT8.value and not int8.exists():
            raise cli.UsageError(f"--int8 {int8} does not exist. If ptq_auto's verdict was fp32 (its recipe's mode), there "
                                 f"is no int8 to gate: pin the verdict with register_model --recipe R.recipe.json, "
                                 f"after which measure_quant_drop --id {e.id} says so and exits 0")
        real, label = (data, "data") if data else (layout.fixture_path(reg.root, e.id), "soak")
        registered_shift = layout.shift_path(reg.root, e.id)
        declared = (_flag_residual() or e.raw.get("residual_of"), e.kind)
        jobs.append(Job(e.id, e.onnx, int8, _budgets(e), real, label,
                        shift or (registered_shift if registered_shift.is_file() else None), declared, e.raw.get("quant_purpose")))
    if not jobs:
        return reg_path, f"{reg_path}: every model is fp32: there is no int8 to gate"
    return reg_path, jobs


def _load_real(model_id, fp32, path, label):
    if path is None:
        return None
    inputs = calibration.graph_inputs(fp32) if fp32.is_file() else []
    what = {"soak": "soak fixture", "data": "--data", "shift": "shift set"}[label]
    extra = () if label == "shift" else (calibration.TARGET_KEY,)
    try:
        return calibration.load_npz(path, inputs, extra)
    except calibration.CalibrationError as e:
        fix = {"soak": " (register_model writes it; see docs/user-guide.md)",
               "shift": " (tools/bazel run //python:build_shift_set writes the zoo's)"}.get(label, "")
        raise cli.UsageError(f"{model_id}: {what} unusable{fix}:\n{e}") from None


def _residual(job: Job):
    """The declared {output: input} residual pairs, checked against the fp32 graph."""
    if not job.fp32.is_file():
        return {}  # gate_model names the missing file
    try:
        return drops.declared_residuals(*job.declared, calibration.read_model(job.fp32))
    except ValueError as e:  # calibration.ModelFileError names the file
        raise cli.UsageError(f"{job.id}: {e}") from None


EXIT_SLOWER = 7


def _speed_gate(model_id, fp32, int8, real, shapes) -> Dict[str, object]:
    """Times int8 against fp32 (tinyq.search.latency.LatencyMeter: interleaved, one thread, medians),
    prints each batch and returns the same numbers with the verdict, for the JSON report."""
    sess32, sess8 = runner.session(str(fp32)), runner.session(str(int8))
    feeds = {i.name: real[i.name] for i in sess32.get_inputs()} if real is not None else \
        gate.synthetic_inputs(sess32, model_id, {}, shapes)
    timing = latency.LatencyMeter(sess32, feeds, {1: 50, 256: 9})(sess8)
    margin = auto.noise_margin(timing.values())
    batches = {}
    for b, t in sorted(timing.items()):
        fast = t.int8_ms <= t.fp32_ms * (1 + margin)
        batches[str(b)] = {"fp32_ms": t.fp32_ms, "int8_ms": t.int8_ms, "speedup": t.speedup, "pass": fast}
        print(f"    speed: batch {b}: fp32 {t.fp32_ms:.3f} ms, int8 {t.int8_ms:.3f} ms, x{t.speedup:.2f} "
              f"({'ok' if fast else f'SLOWER than fp32 beyond the {margin:.0%} margin'})")
    return {"pass": all(v["pass"] for v in batches.values()), "noise_margin": margin, "batches": batches,
            "how": "fp32 and int8 interleaved on one thread, medians (tinyq.search.latency); the same numbers printed"}


def _print_verdict(r: gate.ModelResult) -> None:
    verdict = "PASS" if r.passed else ("NOT JUDGED" if not r.judged else "FAIL")
    worst = "n/a" if r.worst_drop is None else f"{r.worst_drop:.3e}"
    on = {"synthetic": "SYNTHETIC DATA ONLY", "soak": "the soak fixture", "data": "the --data set"}[r.judged_on]
    print(f"[{verdict}] {r.id}: worst drop {worst} on {on} (budget {r.budget:g})")
    shift = r.set("shift")
    if shift is not None:
        drop = "n/a" if shift.drop is None else f"{shift.drop:.3e}"
        sat = gate_report.saturation_text(shift)
        print(f"    shift: worst drop {drop} (budget {shift.budget:g}) {'pass' if shift.passed else 'FAIL'}"
              + (f"; most clipped activation {sat}" if sat else ""))
    for s in r.sets:
        for o in s.outputs:
            if not o.passed or not o.judged or o.compared != "output":
                print(f"    {s.input_set} output {o.name!r} ({o.compared}): {o.reason}")
    if r.task_check is not None:
        print(f"    task: {r.task_check.reason}")
    for line in gate_report.isa_lines(r, prefix="    ", named=False):
        print(line)
    for note in r.notes:
        print(f"    note: {note}")
    if r.latency_error:
        print(f"    latency not measured: {r.latency_error}")


def _write_reports(results, reg_path, gate_pass, speed) -> None:
    table = gate_report.markdown(results)
    print(table, end="")
    if _OUT_MD.value:
        atomic_write_bytes(cli.resolve_user_path(_OUT_MD.value), table.encode())
    if _OUT_JSON.value:
        inputs = [(r.fp32, "fp32_model") for r in results] + [(r.int8, "int8_model") for r in results]
        if reg_path:
            inputs.append((reg_path, "registry"))
        if _DATA.value:
            inputs.append((cli.resolve_user_path(_DATA.value), "data"))
        if _SHIFT.value:
            inputs.append((cli.resolve_user_path(_SHIFT.value), "shift_data"))
        provenance.write_report(cli.resolve_user_path(_OUT_JSON.value), {
            "schema": "tinyq-quant-gate-report-v2",
            "gate_pass": gate_pass,
            # --speed-gate: each artefact meant for speed, timed against fp32 (what was printed); the
            # models' latency_ms is a separate, informative measurement at batch 1 and 256.
            "speed_gate": {"run": bool(_SPEED_GATE.value), "pass": all(v["pass"] for v in speed.values()),
                           "models": speed} if _SPEED_GATE.value else None,
            "models": [gate_report.as_row(r) for r in results],
            "synthetic_set": {"samples": gate.SYNTHETIC_SAMPLES, "seed": gate.SYNTHETIC_SEED, "distribution": "uniform [0, 1)"},
            "run_provenance": provenance.absl_provenance(tool="measure_quant_drop", main_module=sys.modules[__name__], inputs=inputs),
        })


def _guard(plots, reg_path, jobs) -> None:
    """Every output checked before any work: none is an input or a file a registry names (exit 9);
    --plots-dir is a directory, and no plot would replace a registry's file."""
    if plots and plots.exists() and not plots.is_dir():
        raise cli.UsageError(f"--plots-dir {plots} is a file; pass a directory (it is created when missing)")
    outs = {"--out-json": _OUT_JSON.value, "--out-md": _OUT_MD.value}
    outs = {flag: cli.resolve_user_path(v) if v else None for flag, v in outs.items()}
    if plots:
        outs.update({f"--plots-dir ({job.id}.png)": plots / f"{job.id}.png" for job in jobs})
        if not plots.exists():
            outs = {flag: p for flag, p in outs.items() if not flag.startswith("--plots-dir")}
    inputs = [p for job in jobs for p in (job.fp32, job.int8, job.real, job.shift) if p is not None]
    cli.guard_outputs(outs, inputs, reg_path)


def main(argv):
    _check_flags(argv)
    try:
        shapes = gate.parse_input_shapes(_SHAPES.value)
    except gate.GateError as e:
        raise cli.UsageError(str(e)) from None
    plots = _plots_dir()
    reg_path, jobs = _jobs()
    if isinstance(jobs, str):  # the registry says fp32: nothing to gate, and that is the verdict
        print(f"measure_quant_drop: {jobs}")
        return cli.EXIT_OK
    _guard(plots, reg_path, jobs)
    if plots:
        plots.mkdir(parents=True, exist_ok=True)
    latency = _LATENCY.value if _LATENCY.value is not None else not _FP32.value
    results, speed = [], {}
    for job in jobs:
        real = _load_real(job.id, job.fp32, job.real, job.label)
        shift = _load_real(job.id, job.fp32, job.shift, "shift")
        try:
            r = gate.gate_model(job.id, job.fp32, job.int8, job.budgets, real=real, real_label=job.label, shift=shift,
                                residual=_residual(job), input_shapes=shapes, latency=latency,
                                plot=plots / f"{job.id}.png" if plots else None)
        except gate.GateError as e:
            raise cli.UsageError(str(e)) from None
        results.append(r)
        _print_verdict(r)
        if _SPEED_GATE.value and job.purpose == "speed":
            speed[job.id] = _speed_gate(job.id, job.fp32, job.int8, real, shapes)
    slower = [model_id for model_id, verdict in speed.items() if not verdict["pass"]]
    gate_pass = all(r.passed for r in results)
    _write_reports(results, reg_path, gate_pass, speed)
    if not all(r.judged for r in results):
        return cli.EXIT_NOT_JUDGED
    if not gate_pass:
        return cli.EXIT_FAIL
    return EXIT_SLOWER if slower else cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
