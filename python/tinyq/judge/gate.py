"""The accuracy gate: an int8 model against its fp32 source on the same inputs.

Verdicts come only from a judgement (tinyq.judge.drops defines the drop):
  - the budget is judged on real data: a registry model's soak fixture, or --data for any model;
  - the shift set (the val split under degradations stronger than the corpus holds, tinyq.zoo.shift)
    is judged against the shift budget (quant_shift_budget_plcc, default 10x the budget);
  - the seed-0 uniform-noise set (16 samples, dynamic dimensions sized from the real data, the
    sidecar or --input-shape) is a stress check: it must stay finite; its drop is reported, and
    judged only where a budget is set for it (quant_synthetic_budget_plcc). Without real data it
    is judged against the budget and the verdict says that it rests on synthetic data only;
  - a set where no output could be judged (all skipped, or one value) is never a pass;
  - on real data with ground truth the task metric is computed for fp32 and int8, and a filter's
    int8 must keep a share of the fp32's PSNR gain (90 % unless quant_task_budget allows another).
Every real set is judged in both int8 arithmetics a user's CPU can compute (tinyq.judge.arithmetic):
"exact" (int32 accumulation) and "avx2" (int16 pair sums with saturation), natively, through the
session option, or emulated on a seeded subset; a set passes only where both rows pass.
Latency is reported, never gated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tinyq.judge import arithmetic, drops, gate_report
from tinyq.judge.verdicts import ArithmeticRow, Budgets, GateError, ModelResult, SetResult, TaskCheck
from tinyq.model import calibration, runner, weights

SYNTHETIC_SAMPLES = 16
SYNTHETIC_SEED = 0


def residuals_of_entry(entry) -> Dict[str, str]:
    """The {output: input} residual pairs a registry entry declares (kind filter, residual_of)."""
    import onnx

    try:
        return drops.declared_residuals(entry.raw.get("residual_of"), entry.kind,
                                        onnx.load(str(entry.onnx), load_external_data=False))
    except ValueError as e:
        raise GateError(f"{entry.id}: {e}") from None


def load_session(path: Path, what: str, model_id: str):
    problem = calibration.file_problem(path)
    if problem:
        raise GateError(f"{model_id}: {what} model {path} " + ("does not exist" if problem == "file not found" else problem))
    try:
        return runner.session(str(path))
    except calibration.ModelFileError as e:
        raise GateError(f"{model_id}: {what} model {e}") from None
    except Exception as e:  # onnxruntime raises its own exception types
        raise GateError(f"{model_id}: {what} model {path} fails to load in onnxruntime: {e}") from None


def check_quantised(int8: Path, model_id: str) -> None:
    """GateError unless the int8 model holds quantisation (int8 weights, Q/DQ or integer ops): an
    fp32 model passed as the int8 would pass with drop 0."""
    try:
        quantised = weights.is_quantised(calibration.read_model(int8))
    except calibration.ModelFileError as e:
        raise GateError(f"{model_id}: int8 model {e}") from None
    if not quantised:
        raise GateError(f"{model_id}: the int8 model {int8} quantises nothing (no QuantizeLinear, DequantizeLinear or "
                        f"integer op): it is an fp32 model, which would pass with drop 0; pass the int8 artefact")


def parse_input_shapes(values: Sequence[str]) -> Dict[str, Tuple[int, ...]]:
    """--input-shape NAME=d0,d1,... flags."""
    out = {}
    for v in values or ():
        name, sep, dims = v.partition("=")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d < 1 for d in shape):
            raise GateError(f"--input-shape {v!r}: expected NAME=d0,d1,... with positive integers, e.g. dist=16,1,48,48")
        out[name] = shape
    return out


def _synthetic_shape(inp, samples: int, model_id: str) -> Tuple[int, ...]:
    dims = []
    for axis, d in enumerate(inp.shape):
        if axis == 0:
            dims.append(samples)
        elif isinstance(d, int) and d > 0:
            dims.append(d)
        else:
            raise GateError(
                f"{model_id}: input {inp.name!r} has a dynamic dimension {d!r} at axis {axis} (shape {list(inp.shape)}) "
                f"and no real data to size it; pass --data X.npz (real inputs) or --input-shape {inp.name}=<d0,d1,...>")
    return tuple(dims)


def synthetic_inputs(sess, model_id: str, sample_shapes: Dict[str, Tuple[int, ...]],
                     overrides: Dict[str, Tuple[int, ...]]) -> Dict[str, np.ndarray]:
    """The reference recipe's set: 16 samples (a multiple of a fixed batch), uniform [0, 1), seed 0,
    every input, real shapes.

    A dynamic dimension takes its size from --input-shape, else from the real data's samples;
    only a dynamic batch axis defaults (to 16). Nothing is ever forced to 1.
    """
    rng = np.random.default_rng(SYNTHETIC_SEED)
    fixed = runner.fixed_batch(sess)
    samples = -(-SYNTHETIC_SAMPLES // fixed) * fixed if fixed else SYNTHETIC_SAMPLES
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name in overrides:
            shape = overrides[inp.name]
            if len(shape) != len(inp.shape) or any(isinstance(d, int) and d != s for d, s in zip(inp.shape, shape)):
                raise GateError(f"{model_id}: --input-shape {inp.name}={','.join(map(str, shape))} does not fit the "
                                f"input's declared shape {list(inp.shape)}")
        elif inp.name in sample_shapes:
            shape = (samples, *sample_shapes[inp.name])
        else:
            shape = _synthetic_shape(inp, samples, model_id)
        if inp.type != "tensor(float)":
            raise GateError(f"{model_id}: input {inp.name!r} is {inp.type}; the synthetic set feeds float32 inputs only "
                            f"(pass --data X.npz with real inputs)")
        feeds[inp.name] = rng.random(shape, dtype=np.float32)
    return feeds


@dataclass
class SetRun:
    """One input set through both models: the verdict, the raw tensor outputs, and the float
    values as compared (for the scatter plot)."""

    result: SetResult
    fp32: List[np.ndarray]
    int8: List[np.ndarray]
    compared_fp32: np.ndarray
    compared_int8: np.ndarray


def _run_both(sess32, sess8, feeds: Dict[str, np.ndarray]):
    names, skipped = runner.tensor_outputs(sess32)
    if [o.name for o in sess8.get_outputs()] != [o.name for o in sess32.get_outputs()]:
        raise GateError(f"int8 outputs {[o.name for o in sess8.get_outputs()]} differ from fp32 outputs "
                        f"{[o.name for o in sess32.get_outputs()]}")
    ref = runner.run_all(sess32, feeds) if names else []
    out = runner.run_all(sess8, feeds) if names else []
    for name, a, b in zip(names, ref, out):
        if a.shape != b.shape:
            raise GateError(f"output {name!r}: int8 shape {list(b.shape)} differs from fp32 {list(a.shape)}")
    return names, skipped, ref, out


def judge_set(input_set: str, sess32, sess8, feeds: Dict[str, np.ndarray], budget: Optional[float],
              residual: Dict[str, str]) -> SetRun:
    """Runs both models on one input set and judges every output (tinyq.judge.drops)."""
    names, skipped, ref, out = _run_both(sess32, sess8, feeds)
    compared = drops.compared_outputs(names, ref, out, feeds, residual)
    outputs = drops.compare(compared, budget)
    floats = [c for c in compared if c.what != "labels"]
    a = np.concatenate([c.fp32 for c in floats]) if floats else np.zeros(0)
    b = np.concatenate([c.int8 for c in floats]) if floats else np.zeros(0)
    n = len(next(iter(feeds.values())))
    return SetRun(SetResult(input_set, n, outputs + drops.skipped(skipped), budget), ref, out, a, b)


def task_metrics(feeds: Dict[str, np.ndarray], names: Sequence[str], outputs: List[np.ndarray],
                 target: np.ndarray, residual: Dict[str, str]) -> Dict[str, float]:
    """Agreement with the ground truth, on the first output the target fits: PSNR gain for a
    declared residual output, top-1 accuracy for integer labels (from an output of labels, or of
    logits [N, classes]), PLCC/SROCC/RMSE for scores. Empty when none fits."""
    from tinyq.judge.metrics import filter_metrics, quality_metrics

    if target.dtype.kind in "iub":
        logits = [o for o in outputs if o.ndim == 2 and o.shape[0] == target.size and o.shape[1] >= 2 and o.dtype.kind == "f"]
        if logits:
            return {"accuracy": float(np.mean(logits[0].argmax(axis=1) == target.ravel()))}
    fits = [i for i, o in enumerate(outputs) if o.size == target.size and o.size >= 2]
    if not fits:
        return {}
    i = next((j for j in fits if outputs[j].shape == target.shape), fits[0])
    if names[i] in residual and target.shape == outputs[i].shape:
        return filter_metrics(outputs[i], feeds[residual[names[i]]], target)
    if outputs[i].dtype.kind in "iub":
        return {"accuracy": float(np.mean(outputs[i].ravel() == target.ravel()))}
    return quality_metrics(outputs[i], target)


def check_task(task: Dict[str, Dict[str, float]], task_budget: float) -> Optional[TaskCheck]:
    """The kept-gain check for a filter's PSNR gain; None for other task metrics."""
    if "psnr_gain_db" not in task.get("fp32", {}):
        return None
    g32, g8 = task["fp32"]["psnr_gain_db"], task["int8"]["psnr_gain_db"]
    min_kept = 1.0 - task_budget
    if g32 <= 0:
        return TaskCheck(g32, g8, None, min_kept, True,
                         f"fp32 gains {g32:+.4f} dB: no gain to keep, so the kept-gain check does not apply")
    kept = g8 / g32
    ok = kept >= min_kept
    return TaskCheck(g32, g8, kept, min_kept, ok, f"int8 keeps {kept:.1%} of the fp32's PSNR gain "
                     f"({g8:+.4f} of {g32:+.4f} dB) {'>=' if ok else '<'} {min_kept:.0%}")


def _synthetic_run(model_id: str, sess32, sess8, real: Optional[Dict[str, np.ndarray]], budgets: Budgets,
                   input_shapes: Dict[str, Tuple[int, ...]], residual: Dict[str, str], notes: List[str]) -> Optional[SetRun]:
    sample_shapes = {n: tuple(v.shape[1:]) for n, v in (real or {}).items()}
    try:
        synth = synthetic_inputs(sess32, model_id, sample_shapes, input_shapes)
    except GateError as e:
        if real is None:
            raise
        notes.append(f"synthetic stress check skipped: {e}")
        return None
    budget = budgets.plcc if real is None else budgets.synthetic
    return judge_set("synthetic", sess32, sess8, synth, budget, residual)


def _task(result: ModelResult, run: SetRun, feeds, target, sess32, budgets: Budgets, residual) -> None:
    if target is None or not all(o.finite for o in run.result.outputs):
        return
    out_names, _ = runner.tensor_outputs(sess32)
    task32 = task_metrics(feeds, out_names, run.fp32, target, residual)
    if task32:
        result.task = {"fp32": task32, "int8": task_metrics(feeds, out_names, run.int8, target, residual)}
        result.task_check = check_task(result.task, budgets.task)


def judge(model_id: str, fp32: str, int8: str, sess32, sess8, budgets: Budgets, *,
          real: Optional[Dict[str, np.ndarray]] = None, real_label: str = "soak",
          shift: Optional[Dict[str, np.ndarray]] = None, residual: Optional[Dict[str, str]] = None,
          input_shapes: Optional[Dict[str, Tuple[int, ...]]] = None) -> Tuple[ModelResult, Dict[str, SetRun]]:
    """The verdict: the budget on real data where there is some (its `target`, if present, for the
    task metric), the shift budget on the shift set where one is given, the synthetic set as a
    stress check; on the synthetic set alone otherwise."""
    from tinyq.model.calibration import TARGET_KEY

    residual = residual or {}
    names = [i.name for i in sess32.get_inputs()]
    result = ModelResult(model_id, fp32, int8, budgets.plcc, [], judged_on=real_label if real is not None else "synthetic")
    runs: Dict[str, SetRun] = {}
    feeds = {n: real[n] for n in names} if real is not None else None
    if feeds is not None:
        runs[real_label] = judge_set(real_label, sess32, sess8, feeds, budgets.plcc, residual)
        _task(result, runs[real_label], feeds, real.get(TARGET_KEY), sess32, budgets, residual)
    else:
        result.notes.append("judged on synthetic data only (uniform noise): no real data was given; "
                            "pass --data X.npz with real inputs for a verdict that means something")
    if shift is not None:
        runs["shift"] = judge_set("shift", sess32, sess8, {n: shift[n] for n in names}, budgets.shift_budget, residual)
    synthetic = _synthetic_run(model_id, sess32, sess8, feeds, budgets, input_shapes or {}, residual, result.notes)
    if synthetic is not None:
        runs["synthetic"] = synthetic
    result.sets = [r.result for r in runs.values()]
    return result, runs


def _check_inputs_match(model_id: str, sess32, sess8) -> None:
    in32, in8 = [i.name for i in sess32.get_inputs()], [i.name for i in sess8.get_inputs()]
    if in32 != in8:
        raise GateError(f"{model_id}: int8 inputs {in8} differ from fp32 inputs {in32}")


def _saturation(result: ModelResult, int8: Path, real, shift, names) -> None:
    """The share clipped at each quantised activation's calibrated range, on each real set,
    activations named as in the fp32 model."""
    from tinyq.judge import saturation

    for s, data in ((result.set(result.judged_on), real), (result.set("shift"), shift)):
        if s is not None and data is not None:
            s.saturation = saturation.clipped_shares(int8, {n: data[n] for n in names}, result.fp32)


def _native_row(result: ModelResult, s: SetResult, cpu: arithmetic.Cpu) -> ArithmeticRow:
    check = result.task_check if s.input_set == result.judged_on else None
    passed = s.native_passed and (check is None or check.passed)
    return ArithmeticRow(cpu.native, arithmetic.describe(cpu.native, cpu), s.samples, s.drop, passed,
                         None if check is None else check.kept)


def _other_row(which: str, s: SetResult, int8: str, integer: bool, sess32, feeds, target, residual, budgets: Budgets,
               cpu: arithmetic.Cpu) -> ArithmeticRow:
    """The set judged in an arithmetic this CPU does not compute natively, on the emulated subset;
    integer: whether the int8 graph has a u8 x s8 kernel (tinyq.judge.arithmetic.how)."""
    idx = arithmetic.subset(s.samples) if arithmetic.how(which, cpu, integer) == "emulated" else np.arange(s.samples)
    sub = {k: v[idx] for k, v in feeds.items()}
    how = arithmetic.describe(which, cpu, len(idx), s.samples, integer)
    try:
        out = arithmetic.run(int8, sub, which, cpu, integer)
    except arithmetic.ArithmeticUnavailable as e:
        return ArithmeticRow(which, how, 0, None, False, reason=f"not computed: {e}")
    names, _ = runner.tensor_outputs(sess32)
    ref = runner.run_all(sess32, sub)
    outputs = drops.compare(drops.compared_outputs(names, ref, out, sub, residual), s.budget)
    row = ArithmeticRow(which, how, len(idx), drops.worst(outputs),
                        all(o.passed for o in outputs) and (s.budget is None or drops.any_judged(outputs)))
    if target is not None and all(o.finite for o in outputs):
        t = {"fp32": task_metrics(sub, names, ref, target[idx], residual), "int8": task_metrics(sub, names, out, target[idx], residual)}
        check = check_task(t, budgets.task) if t["fp32"] else None
        if check is not None:
            row.kept_gain, row.passed = check.kept, row.passed and check.passed
    if not row.passed:
        row.reason = next((o.reason for o in outputs if not o.passed), "the kept PSNR gain is under its floor")
    return row


def arithmetic_rows(result: ModelResult, int8: Path, sess32, real, shift, residual, budgets: Budgets) -> None:
    """Each real set judged in both arithmetics (tinyq.judge.arithmetic); the model's CPU and pair bounds."""
    from tinyq.model import calibration as calib
    from tinyq.quant import overflow

    cpu = arithmetic.host_cpu()
    bounds = overflow.pair_bounds(calib.read_model(int8))
    result.cpu, result.overflow = cpu.as_dict(), overflow.summary(bounds)
    names = [i.name for i in sess32.get_inputs()]
    for s, data in ((result.set(result.judged_on), real), (result.set("shift"), shift)):
        if s is None or data is None:
            continue
        feeds = {n: data[n] for n in names}
        target = data.get(calib.TARGET_KEY) if s.input_set == result.judged_on else None
        s.isa = {a: _native_row(result, s, cpu) if a == cpu.native else
                 _other_row(a, s, str(int8), bool(bounds), sess32, feeds, target, residual or {}, budgets, cpu)
                 for a in arithmetic.ARITHMETICS}


def gate_model(model_id: str, fp32: Path, int8: Path, budgets: Budgets, *,
               real: Optional[Dict[str, np.ndarray]] = None, real_label: str = "soak",
               shift: Optional[Dict[str, np.ndarray]] = None, residual: Optional[Dict[str, str]] = None,
               input_shapes: Optional[Dict[str, Tuple[int, ...]]] = None, latency: bool = True,
               plot: Optional[Path] = None, arithmetics: bool = True) -> ModelResult:
    """Judges one int8 model against its fp32 source; raises GateError when it cannot.
    arithmetics: judge each real set in both int8 arithmetics (False: this CPU's own only)."""
    sess32 = load_session(fp32, "fp32", model_id)
    sess8 = load_session(int8, "int8", model_id)
    check_quantised(int8, model_id)
    _check_inputs_match(model_id, sess32, sess8)
    try:
        result, runs = judge(model_id, str(fp32), str(int8), sess32, sess8, budgets, real=real, real_label=real_label,
                             shift=shift, residual=residual, input_shapes=input_shapes)
        _saturation(result, int8, real, shift, [i.name for i in sess32.get_inputs()])
        if arithmetics:
            arithmetic_rows(result, int8, sess32, real, shift, residual, budgets)
    except GateError as e:
        raise GateError(f"{model_id}: {e}" if not str(e).startswith(model_id) else str(e)) from None
    except Exception as e:  # onnxruntime rejects the feeds: wrong shapes for this graph
        raise GateError(f"{model_id}: running the models failed: {e}") from None
    if latency:
        _measure_latency(result, sess32, sess8, real, input_shapes or {}, model_id)
    if plot is not None:
        gate_report.plot_runs(plot, result, runs)
    return result


def _measure_latency(result: ModelResult, sess32, sess8, real, input_shapes, model_id: str) -> None:
    """Latency on the real data where there is some; a failure is reported, never raised: the
    accuracy verdict stands."""
    try:
        names = [i.name for i in sess32.get_inputs()]
        timed = {n: real[n] for n in names} if real is not None else synthetic_inputs(sess32, model_id, {}, input_shapes)
        result.latency_ms = {which: runner.latency_table(sess, timed, 50) for which, sess in (("fp32", sess32), ("int8", sess8))}
    except Exception as e:  # noqa: BLE001 - latency informs only
        result.latency_error = f"{type(e).__name__}: {e}"
