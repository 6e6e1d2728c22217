"""Auto mode: searches int8 configurations and picks the fastest one within the accuracy budget.

Usage: bazel run //python:ptq_auto -- --id ID
       bazel run //python:ptq_auto -- --fp32 A.onnx --calibration C.npz --validation V.npz [--shift S.npz]
           [--residual-of [OUTPUT=]INPUT] [--budget X] [--shift-budget X] [--task-budget X] [--no-speedup size-only|fp32]
           [--output M.int8.onnx] [--report-out R.json] [--recipe-out P.json] [--plot-out P.png]

Candidates: weight-only; static QDQ (uint8 activations, int8 symmetric weights) per-tensor and
per-channel with MinMax, Entropy and Percentile ranges, each calibrated plain or range-robust (the
calibration set plus seeded noisy copies); each with subsets of fp32 fallback groups
(tinyq.search.auto). Each is judged as the gate judges (tinyq.judge.drops: the worst output's drop) on the
validation set (a registry model's val-split data in model/tiny/validation/<id>.val.npz, or
--validation) and on the shift set (model/tiny/shift/<id>.shift.npz, or --shift: the val split
under stronger degradations) against the shift budget; never on the soak fixture, which stays the
held-out judge. Each is inspected in onnxruntime's optimised graph for unfused compute ops, and timed
against fp32 at batch 1 and 256, interleaved, on one thread. The candidates within budget whose
convolutions miss onnxruntime's fused int8 path are tried again with the kernel-aware rewrites
(tinyq.quant.rewrites: padded channels, outputs unchanged). The choice: the fastest fully fused candidate
within budget that beats fp32 by more than the noise margin; among those within the margin of it,
the lowest drop, then the smallest file; else weight-only as a size-only artefact when it is as
fast as fp32 within the margin, and fp32 when it is slower (--no-speedup size-only ships it anyway,
--no-speedup fp32 never).

It prints the candidate table and the recipe, the line for model/zoo.bzl from which
//model:<id>_int8 rebuilds the artefact byte for byte. --output writes the chosen artefact, with
its report (default <output>.auto.json) and recipe (default <output>.recipe.json) beside it, all
or none; when the verdict is fp32, only the report and recipe.
--max-memory caps what the Entropy and Percentile calibrations keep (a seeded subset of the
calibration set beyond it; the recipe repeats it with ptq_static --calibration-samples), and
--max-minutes the search (candidates left are skipped and listed). A candidate that fails inside
onnxruntime is dropped with its reason.
Exit codes: 0 a choice was made, 2 bad input, 6 no candidate within budget: the verdict is fp32
with the reason (no artefact; the report and recipe are written as for any fp32 verdict), and the
message names the next step (quantisation-aware training only where python/configs/<id>_qat.yaml
exists). A search where no candidate quantises any weight says where the weights are instead.
"""

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_all, dumps_json
from tinyq.judge import drops, gate
from tinyq.model import calibration, runner
from tinyq.quant import quantize
from tinyq.registry import defaults, heldout, layout, registry
from tinyq.search import auto, auto_report, budget, latency, layer_costs

EXIT_NONE_WITHIN_BUDGET = 6

_ID = flags.DEFINE_string("id", None, "A registry model.")
_FP32 = flags.DEFINE_string("fp32", None, "An fp32 model outside the registry (with --calibration and --validation).")
_CALIBRATION = flags.DEFINE_string("calibration", None, "Calibration .npz (train data; default: the registry's).")
_VALIDATION = flags.DEFINE_string("validation", None, "Validation .npz with real val data, optional `target` "
                                  "(default: model/tiny/validation/<id>.val.npz).")
_SHIFT = flags.DEFINE_string("shift", None, "Shift set .npz (real inputs under stronger degradations, from the val "
                             "split; default for --id: model/tiny/shift/<id>.shift.npz where it exists).")
_SHIFT_BUDGET = flags.DEFINE_float("shift-budget", None, "Drop budget on the shift set (default: the registry's, else "
                                   "10x the budget).", lower_bound=0)
_BUDGET = flags.DEFINE_float("budget", None, "Drop budget (default: the registry's, else 0.01).", lower_bound=0)
_TASK_BUDGET = flags.DEFINE_float("task-budget", None, "Share of a filter's PSNR gain the int8 may lose.", lower_bound=0, upper_bound=1)
_NO_SPEEDUP = flags.DEFINE_enum("no-speedup", None, ["size-only", "fp32"],
                                "When no candidate is faster than fp32: size-only ships weight-only for its size even "
                                "when it runs slower; fp32 keeps the model fp32. Default: weight-only as size-only only "
                                "when it is as fast as fp32 within the noise margin, else fp32.")
_OUTPUT = flags.DEFINE_string("output", None, "Write the chosen int8 artefact here, with its report and recipe "
                              "(default beside it: <output minus .onnx>.auto.json, .recipe.json).")
_REPORT = flags.DEFINE_string("report-out", None, "Write the tinyq-ptq-auto-report-v1 JSON (every candidate) here.")
_RECIPE = flags.DEFINE_string("recipe-out", None, "Write the chosen recipe JSON here.")
_PLOT = flags.DEFINE_string("plot-out", None, "Write the drop-against-latency PNG here.")
_RESIDUAL_OF = flags.DEFINE_multi_string("residual-of", [], "With --fp32: INPUT (the first output restores it) or "
                                          "OUTPUT=INPUT, an output judged on its residual; every other output is "
                                          "judged on itself (a registry model: its kind and residual_of).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")
_MAX_MEMORY = flags.DEFINE_float("max-memory", budget.DEFAULT_MAX_MEMORY_GIB, "GiB the Entropy and Percentile "
                                  "calibrations may keep (they store every activation of every sample): beyond it "
                                  "they calibrate on a seeded subset, and the report says how many samples.", lower_bound=0.01)
_MAX_MINUTES = flags.DEFINE_float("max-minutes", budget.DEFAULT_MAX_MINUTES, "Minutes the search may take; the "
                                  "candidates left when it runs out are skipped and listed.", lower_bound=0.01)
_REPEATS = {1: 50, 256: 9}
cli.finite(_BUDGET, _SHIFT_BUDGET, _TASK_BUDGET)


def _inputs():
    """(label, fp32 path, calibration path, validation path, shift path or None, budgets, (residual_of, kind))."""
    if bool(_ID.value) == bool(_FP32.value):
        raise cli.UsageError("give --id ID, or --fp32 A.onnx --calibration C.npz --validation V.npz")
    if _FP32.value:
        if not (_CALIBRATION.value and _VALIDATION.value):
            raise cli.UsageError("--fp32 needs --calibration C.npz (train data) and --validation V.npz (real val data)")
        fp32 = cli.resolve_user_path(_FP32.value)
        base, label = gate.Budgets(defaults.DEFAULT_BUDGET_PLCC), fp32.name.removesuffix(".onnx")
        cal, val = cli.resolve_user_path(_CALIBRATION.value), cli.resolve_user_path(_VALIDATION.value)
        try:
            declared = (drops.parse_residual_flags(_RESIDUAL_OF.value), None)
        except ValueError as e:
            raise cli.UsageError(str(e)) from None
    else:
        # Selection never opens the soak fixture, not even to check its shape.
        reg = cli.load_valid_registry(cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY), read_held_out=False)
        try:
            entry = reg.get(_ID.value)
        except KeyError as e:
            raise cli.UsageError(str(e.args[0])) from None
        if _RESIDUAL_OF.value:
            raise cli.UsageError("--residual-of goes with --fp32; a registry model declares it (kind filter, residual_of)")
        fp32, base, label = entry.onnx, gate.Budgets.of_entry(entry), entry.id
        declared = (entry.raw.get("residual_of"), entry.kind)
        cal = cli.resolve_user_path(_CALIBRATION.value) if _CALIBRATION.value else (
            entry.calibration_set or layout.calibration_path(reg.root, entry.id))
        val = cli.resolve_user_path(_VALIDATION.value) if _VALIDATION.value else layout.validation_path(reg.root, entry.id)
        if not _VALIDATION.value and not val.is_file():
            raise cli.UsageError(f"{entry.id} has no validation set ({val} does not exist): register one with "
                                 f"register_model --validation-data V.npz (real val-split inputs), or pass --validation V.npz")
        if not _CALIBRATION.value and not Path(cal).is_file():
            raise cli.UsageError(f"{entry.id} has no calibration set ({cal} does not exist): register one with "
                                 f"register_model --calibration-data C.npz, or pass --calibration C.npz")
        _refuse_held_out(reg, {"--calibration": cal, "--validation": val})
        registered = layout.shift_path(reg.root, entry.id)
        shift = None if _SHIFT.value or not registered.is_file() else registered
    if _SHIFT.value or _FP32.value:
        shift = cli.resolve_user_path(_SHIFT.value) if _SHIFT.value else None
    budgets = base.overridden(plcc=_BUDGET.value, task=_TASK_BUDGET.value, shift=_SHIFT_BUDGET.value)
    return label, fp32, cal, val, shift, budgets, declared


def _refuse_held_out(reg, sets) -> None:
    """Choices are made on the calibration and validation sets, never on a soak fixture (compared
    by file identity: no fixture is opened)."""
    fixtures = heldout.soak_fixtures(reg.root, reg.data["models"], registry.ID_PATTERN.fullmatch)
    for flag, path in sets.items():
        fixture = heldout.reused_fixture(Path(path), fixtures)
        if fixture is not None:
            raise cli.UsageError(f"{flag} {path} is the soak fixture {fixture} (or a link to it): ptq_auto chooses on "
                                 f"calibration and validation data and never on the held-out set that judges it; "
                                 f"pass a val-split set")


def _load(fp32, cal_path, val_path, shift_path):
    try:
        model, _ = quantize.load_for_quantization(fp32)
        inputs = calibration.graph_inputs(model)
        cal = calibration.load_inputs(cal_path, inputs)
        val = calibration.load_npz(val_path, inputs, (calibration.TARGET_KEY,))
        shift = calibration.load_inputs(shift_path, inputs) if shift_path else None
    except (quantize.QuantizeError, calibration.CalibrationError) as e:
        raise cli.UsageError(str(e)) from None
    for what, path, arrays, minimum in (("the calibration set", cal_path, cal, calibration.MIN_CALIBRATION_SAMPLES),
                                        ("the validation set", val_path, val, calibration.MIN_VALIDATION_SAMPLES)):
        warning = calibration.tiny_data_warning(what, path, arrays, minimum)
        if warning:
            print(warning, file=sys.stderr)
    return model, cal, val, shift


def _residual(model, declared):
    """The {output: input} pairs judged on their residual."""
    try:
        return drops.declared_residuals(*declared, model)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None


def _search(label, model, cal, val, shift, budgets, residual, workdir):
    groups = auto.fallback_groups(model)
    print(f"ptq_auto: {label}: {len(groups)} fp32 fallback group(s): " + "; ".join(
        f"{g.name} ({len(g.quantizable)} quantisable ops)" for g in groups), flush=True)
    sess32 = runner.session(model.SerializeToString())
    feeds = {i.name: val[i.name] for i in sess32.get_inputs()}
    hist = budget.histogram_samples(model, cal, _MAX_MEMORY.value)
    if hist.used < hist.given:
        print(f"ptq_auto: {label}: Entropy and Percentile calibrate on {hist.used} of {hist.given} samples (seeded): "
              f"{hist.bytes_per_sample:,} bytes of activations per sample, --max-memory {_MAX_MEMORY.value:g} GiB", flush=True)
    builder = auto.CandidateBuilder(model, cal, groups, workdir, histogram_samples=hist.used)
    measure = auto.Measure(builder, auto.Evaluator(sess32, val, budgets, residual, shift),
                           latency.LatencyMeter(sess32, feeds, _REPEATS), lambda line: print(line, flush=True),
                           deadline=time.monotonic() + 60 * _MAX_MINUTES.value)
    return measure, auto.search(measure, groups), hist


def _no_candidate(label, budgets, rows) -> str:
    """Why no candidate is within budget, and the next step: QAT only where a config for it exists."""
    failed = [r for r in rows if auto.verdict(r) == "failed"]
    judged = [r for r in rows if auto.verdict(r) == "over budget"]
    also = (f"; {len(failed)} of {len(rows)} candidates failed inside onnxruntime (e.g. {failed[0].candidate.name}: "
            f"{failed[0].accuracy.reason.removeprefix('failed: ')[:300]}; every reason is in the report)") if failed else ""
    if not judged:
        wo = next((r for r in rows if r.candidate.encoding == "weight_only" and r.int8), None)
        left = quantize.coverage_of(wo.int8, "weight_only").left_fp32 if wo else []
        where = "; ".join(f"{x.count} {x.op} ({x.elements} elements): {x.reason}" for x in left) or "the graph has none"
        return f"no candidate quantises a weight, so there is no int8 to ship: {where}{also}; the model stays fp32"
    best = min((r.accuracy.drop for r in judged if r.accuracy.drop is not None), default=None)
    why = (f"no candidate is within budget {budgets.plcc:g} on the validation set (best drop "
           f"{'n/a' if best is None else f'{best:.3g}'}){also}; the model stays fp32")
    config = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", ".")) / "python" / "configs" / f"{label}_qat.yaml"
    if config.is_file():
        return (why + f". Next step: quantisation-aware training: tools/bazel run //python:qat_train -- --config "
                      f"python/configs/{label}_qat.yaml --output /tmp/{label}.qat.int8.onnx --report-out /tmp/{label}.qat.json")
    return why + (f". tinyq's quantisation-aware training (qat_train) trains the zoo's models from a config, and "
                  f"python/configs/{label}_qat.yaml does not exist: keep the model fp32 (register_model --quant-mode "
                  f"fp32), or quantise it in your own training")


def _json(obj) -> bytes:
    return dumps_json(provenance.normalise(obj)).encode()


def _output_paths():
    """{flag: path or None} for every file ptq_auto may write; --output brings its report and recipe."""
    out = cli.resolve_user_path(_OUTPUT.value) if _OUTPUT.value else None
    stem = None if out is None else out.with_name(out.name.removesuffix(".onnx"))

    def path(flag, suffix):
        if flag.value:
            return cli.resolve_user_path(flag.value)
        return None if stem is None or suffix is None else stem.with_name(stem.name + suffix)

    return {"--output": out, "--report-out": path(_REPORT, ".auto.json"), "--recipe-out": path(_RECIPE, ".recipe.json"),
            "--plot-out": path(_PLOT, None)}


def _limits(rows, hist) -> dict:
    """The memory and time budgets, and what they cost: the histogram methods' samples, the skipped candidates."""
    return {"max_memory_gib": _MAX_MEMORY.value, "max_minutes": _MAX_MINUTES.value,
            "histogram_calibration_samples": hist.as_dict(),
            "skipped": [r.candidate.name for r in rows if auto.verdict(r) == "skipped"]}


def _write_outputs(label, fp32, cal, val, shift_path, budgets, measure, rows, choice, rec, wall, limits):
    paths = _output_paths()
    outputs = {}
    if paths["--output"] and choice.row is not None:
        outputs[paths["--output"]] = choice.row.int8
    if paths["--plot-out"]:
        outputs[paths["--plot-out"]] = auto_report.plot_png(label, rows, choice, budgets.plcc)
    if paths["--recipe-out"]:
        pinned = {"int8_sha256": hashlib.sha256(choice.row.int8).hexdigest()} if choice.row is not None else {}
        outputs[paths["--recipe-out"]] = _json({"id": label, **rec, **pinned})
    if paths["--report-out"]:
        report = {
            "schema": "tinyq-ptq-auto-report-v1",
            "id": label,
            "budget": budgets.plcc,
            "shift_budget": budgets.shift_budget if shift_path else None,
            "shift_set": str(shift_path) if shift_path else None,
            "task_budget": budgets.task,
            "noise_margin": choice.margin,
            "fallback_groups": [g.__dict__ for g in measure.builder.groups.values()],
            "exhaustive_groups_limit": auto.EXHAUSTIVE_GROUPS,
            "latency": latency.settings(_REPEATS),
            "limits": limits,
            "candidates": [auto_report.row_dict(r, measure.builder) for r in rows],
            "layer_costs": {name: layer_costs.as_dicts(costs) for name, costs in measure.layer_tables.items()},
            "choice": {**rec, "candidate": choice.row.candidate.name if choice.row else None, "reason": choice.reason,
                       "output": str(paths["--output"]) if paths["--output"] and choice.row else None},
            "search_wall_time_s": round(wall, 1),
            "run_provenance": provenance.absl_provenance(
                tool="ptq_auto", main_module=sys.modules[__name__],
                inputs=[(fp32, "fp32_model"), (cal, "calibration_set"), (val, "validation_set")],
                outputs=[(paths["--output"], "int8_model", choice.row.int8)] if paths["--output"] in outputs else []),
        }
        outputs[paths["--report-out"]] = _json(report)
    atomic_write_all(list(outputs.items()))
    for path in outputs:
        print(f"ptq_auto: wrote {path}")
    if paths["--output"] and choice.row is None:
        print(f"ptq_auto: {label} stays fp32 ({choice.reason}); no artefact written to {paths['--output']}")


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    label, fp32, cal_path, val_path, shift_path, budgets, declared = _inputs()
    given = {"--report-out": _REPORT.value, "--recipe-out": _RECIPE.value}
    # A report or recipe put beside --output by default is named as such in a refusal.
    named = {flag if given.get(flag, True) else f"{flag} (by default beside --output)": path
             for flag, path in _output_paths().items()}
    cli.guard_outputs(named, [fp32, cal_path, val_path] + ([shift_path] if shift_path else []),
                      cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY))
    model, cal, val, shift = _load(fp32, cal_path, val_path, shift_path)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tinyq_auto_") as tmp:
        measure, rows, hist = _search(label, model, cal, val, shift, budgets, _residual(model, declared), Path(tmp))
    wall = time.monotonic() - start
    choice = auto.choose(rows, _NO_SPEEDUP.value)
    print(auto_report.table(rows, choice), end="")
    none_within = choice is None
    if none_within:  # the verdict is fp32, with the real reason; the report and recipe say so
        choice = auto.Choice(None, "fp32", auto.noise_margin(t for r in rows for t in r.timing.values()),
                             _no_candidate(label, budgets, rows))
    rec = auto_report.recipe(choice, measure.builder)
    print(f"choice: {choice.row.candidate.name if choice.row else 'fp32'} ({choice.purpose}): {choice.reason}")
    limits = _limits(rows, hist)
    skipped = f" ({len(limits['skipped'])} skipped: --max-minutes {_MAX_MINUTES.value:g} ran out)" if limits["skipped"] else ""
    print(f"search took {wall:.0f} s over {len(rows)} candidates{skipped}; model/zoo.bzl recipe:\n    "
          f"{auto_report.zoo_entry(label, rec)}")
    _write_outputs(label, fp32, cal_path, val_path, shift_path, budgets, measure, rows, choice, rec, wall, limits)
    if none_within:
        sys.stderr.write(f"ptq_auto: {label}: {choice.reason}\n")
        return EXIT_NONE_WITHIN_BUDGET
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
