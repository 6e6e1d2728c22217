"""The accuracy gate: an int8 model against its fp32 source on the same inputs.

The budget is judged on real data: a registry model's soak fixture (held-out inputs with ground
truth), or the --data file given for any other model. The seed-0 uniform-noise set (16 samples,
dynamic dimensions sized from the real data, the sidecar or --input-shape, never forced to 1) is a
stress check: it must stay finite, its drop is always reported, and it is judged against a budget
only where one is set for it (`quant_synthetic_budget_plcc`). Without real data the synthetic set
is judged against the budget, and the verdict says that it rests on synthetic data only.

Per output: drop = 1 - Pearson r in float64, on the residual (output - input) where the output
has an input's shape (image-to-image models), so a filter that keeps its input cannot hide its
damage; integer outputs (labels) are judged by their disagreement rate; sequence and map outputs
(skl2onnx's ZipMap) are skipped with a note. Models are fed at the batch they accept: one sample
at a time where the batch is fixed at 1 or an output is reduced over the batch. A NaN or infinite
output fails the model. A constant output, where Pearson r is undefined, is judged by its worst
absolute delta against a stated tolerance. On real data with ground truth the task metric is
computed for fp32 and int8; a filter's int8 must keep a share of the fp32's PSNR gain (90 % unless
`quant_task_budget` allows another loss). Latency is reported, never gated.
"""


from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

ModelRef = Union[str, bytes]


def session(model: ModelRef, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts, providers=["CPUExecutionProvider"])


# --- feeding a model at the batch it accepts ---------------------------------------------------


def fixed_batch(sess) -> Optional[int]:
    """The batch size the graph fixes on axis 0 of its inputs, or None when it is dynamic."""
    dims = {i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0}
    return min(dims) if dims else None


def tensor_outputs(sess) -> Tuple[List[str], Dict[str, str]]:
    """(names of the tensor outputs, {name: type} of the sequence and map outputs)."""
    names, skipped = [], {}
    for o in sess.get_outputs():
        if str(o.type).startswith("tensor("):
            names.append(o.name)
        else:
            skipped[o.name] = str(o.type)
    return names, skipped


def _slice(feeds: Dict[str, np.ndarray], start: int, stop: int) -> Dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in feeds.items()}


def _per_batch(outputs: Sequence[np.ndarray], rows: int) -> bool:
    return all(o.ndim >= 1 and o.shape[0] == rows for o in outputs)


def feed_step(sess, feeds: Dict[str, np.ndarray], batch: int = 256) -> int:
    """How many samples one run takes: the fixed batch, else `batch`, else 1 where an output is
    not per sample (0-d, or reduced over the batch; found by a run on two samples)."""
    fixed = fixed_batch(sess)
    if fixed:
        return fixed
    n = len(next(iter(feeds.values())))
    if n < 2:
        return 1
    names, _ = tensor_outputs(sess)
    return batch if _per_batch(sess.run(names, _slice(feeds, 0, 2)), 2) else 1


def run_all(sess, feeds: Dict[str, np.ndarray], batch: int = 256) -> List[np.ndarray]:
    """Every tensor output of the model over every sample, one row per sample."""
    names, _ = tensor_outputs(sess)
    n = len(next(iter(feeds.values())))
    step = feed_step(sess, feeds, batch)
    chunks = [sess.run(names, _slice(feeds, i, i + step)) for i in range(0, n, step)]
    out = []
    for j in range(len(names)):
        parts = [c[j] for c in chunks]
        rows_match = all(p.ndim >= 1 and p.shape[0] == min(step, n - i * step) for i, p in enumerate(parts))
        out.append(np.concatenate(parts) if rows_match else np.stack(parts))
    return out


def pearson_drop(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Pearson r of two output sets, in float64."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(1.0 - np.corrcoef(a, b)[0, 1])


# --- latency (reported, never gated) ---------------------------------------------------------


def median_latency_ms(sess, feeds: Dict[str, np.ndarray], batch: int, repeats: int) -> float:
    """Median wall time of one run at this batch size, after a warm-up run."""
    names, _ = tensor_outputs(sess)
    n = len(next(iter(feeds.values())))
    idx = np.arange(batch) % n
    x = {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}
    sess.run(names, x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(names, x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


LATENCY_BATCHES = (1, 256)


def latency_table(sess, feeds: Dict[str, np.ndarray], repeats: int) -> Dict[str, float]:
    """Median ms at each of LATENCY_BATCHES, or only at the batch the graph fixes; larger batches
    run a tenth as many times (at least 5)."""
    fixed = fixed_batch(sess)
    batches = (fixed,) if fixed else LATENCY_BATCHES
    return {str(b): median_latency_ms(sess, feeds, b, repeats if b == 1 else max(5, repeats // 10)) for b in batches}


def inputs_only(arrays: Dict[str, np.ndarray], names: Sequence[str]) -> Dict[str, np.ndarray]:
    return {k: arrays[k] for k in names}


# --- the gate --------------------------------------------------------------------------------

SYNTHETIC_SAMPLES = 16
SYNTHETIC_SEED = 0
DEFAULT_CONSTANT_ATOL = 1e-3
DEFAULT_TASK_BUDGET = 0.10  # a filter's int8 may lose at most this share of the fp32's PSNR gain
ZIPMAP_FIX = "re-export without it: skl2onnx's convert_sklearn(..., options={id(model): {'zipmap': False}})"


class GateError(Exception):
    """Cannot judge the model (missing file, bad shapes, a session that fails): exit 2."""


@dataclass
class OutputResult:
    name: str
    drop: Optional[float]  # None when Pearson r is undefined (a constant output) or the output is skipped
    worst_abs_delta: Optional[float]
    constant: bool
    finite: bool
    passed: bool
    reason: str
    compared: str = "output"  # "output", "residual vs <input>", "labels" or "skipped"
    values: int = 0  # how many values were compared


@dataclass
class SetResult:
    input_set: str  # "soak", "data" or "synthetic"
    samples: int
    outputs: List[OutputResult]
    aggregate_drop: Optional[float]
    passed: bool
    budget: Optional[float] = None  # None: only finiteness is judged (the stress check)


@dataclass
class TaskCheck:
    """A filter's kept PSNR gain: int8 gain / fp32 gain, against 1 - quant_task_budget."""

    fp32_gain_db: float
    int8_gain_db: float
    kept: Optional[float]
    min_kept: float
    passed: bool
    reason: str


@dataclass
class ModelResult:
    id: str
    fp32: str
    int8: str
    budget: float
    sets: List[SetResult]
    judged_on: str = "synthetic"  # the set the budget was judged on: "soak", "data" or "synthetic"
    task: Dict[str, Dict[str, float]] = field(default_factory=dict)  # {"fp32": {...}, "int8": {...}}
    task_check: Optional[TaskCheck] = None
    notes: List[str] = field(default_factory=list)
    latency_ms: Dict[str, Dict[str, float]] = field(default_factory=dict)
    latency_error: Optional[str] = None
    scatter_png: Optional[str] = None

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.sets) and (self.task_check is None or self.task_check.passed)

    @property
    def worst_drop(self) -> Optional[float]:
        """The worst drop on the set the budget was judged on."""
        drops = [o.drop for s in self.sets if s.input_set == self.judged_on for o in s.outputs if o.drop is not None]
        return max(drops) if drops else None

    @property
    def synthetic_only(self) -> bool:
        return self.judged_on == "synthetic"


def load_session(path: Path, what: str, model_id: str):
    if not Path(path).is_file():
        raise GateError(f"{model_id}: {what} model {path} does not exist")
    try:
        return session(str(path))
    except Exception as e:  # onnxruntime raises its own exception types
        raise GateError(f"{model_id}: {what} model {path} fails to load in onnxruntime: {e}") from None


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


def synthetic_inputs(sess, model_id: str, sample_shapes: Dict[str, Tuple[int, ...]],
                     overrides: Dict[str, Tuple[int, ...]]) -> Dict[str, np.ndarray]:
    """The reference recipe's set: 16 samples (a multiple of a fixed batch), uniform [0, 1), seed 0,
    every input, real shapes.

    A dynamic dimension takes its size from --input-shape, else from the real data's samples;
    only a dynamic batch axis defaults (to 16). Nothing is ever forced to 1.
    """
    rng = np.random.default_rng(SYNTHETIC_SEED)
    fixed = fixed_batch(sess)
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
            dims = []
            for axis, d in enumerate(inp.shape):
                if axis == 0:
                    dims.append(samples)
                elif isinstance(d, int) and d > 0:
                    dims.append(d)
                else:
                    raise GateError(
                        f"{model_id}: input {inp.name!r} has a dynamic dimension {d!r} at axis {axis} (shape {list(inp.shape)}) "
                        f"and no real data to size it; pass --data X.npz (real inputs) or --input-shape {inp.name}=<d0,d1,...>"
                    )
            shape = tuple(dims)
        if inp.type != "tensor(float)":
            raise GateError(f"{model_id}: input {inp.name!r} is {inp.type}; the synthetic set feeds float32 inputs only "
                            f"(pass --data X.npz with real inputs)")
        feeds[inp.name] = rng.random(shape, dtype=np.float32)
    return feeds


def residual_inputs(names: Sequence[str], outputs: Sequence[np.ndarray], feeds: Dict[str, np.ndarray]) -> Dict[str, str]:
    """{output: input} for every float output that has a float input's exact shape."""
    pairs = {}
    for name, out in zip(names, outputs):
        match = [k for k, x in feeds.items() if out.dtype.kind == "f" and x.dtype.kind == "f" and x.shape == out.shape]
        if match:
            pairs[name] = match[0]
    return pairs


@dataclass
class Compared:
    """One output as the gate compares it: labels, or float64 values (the residual where the
    output has an input's shape)."""

    name: str
    fp32: np.ndarray
    int8: np.ndarray
    what: str  # "output", "residual vs <input>" or "labels"


def compared_outputs(names: Sequence[str], ref: Sequence[np.ndarray], out: Sequence[np.ndarray],
                     feeds: Dict[str, np.ndarray]) -> List[Compared]:
    residual = residual_inputs(names, ref, feeds)
    result = []
    for name, a, b in zip(names, ref, out):
        if a.dtype.kind in "iub":
            result.append(Compared(name, a.ravel(), b.ravel(), "labels"))
            continue
        a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        if name in residual:
            x = np.asarray(feeds[residual[name]], np.float64).ravel()
            result.append(Compared(name, a64 - x, b64 - x, f"residual vs {residual[name]}"))
        else:
            result.append(Compared(name, a64, b64, "output"))
    return result


def _compare_labels(c: Compared, budget: Optional[float]) -> OutputResult:
    disagreement = float(np.mean(c.fp32 != c.int8)) if c.fp32.size else 0.0
    ok = budget is None or disagreement <= budget
    limit = "" if budget is None else f" {'<=' if ok else '>'} budget {budget:g}"
    return OutputResult(c.name, disagreement, None, False, True, ok,
                        f"labels: agreement {1 - disagreement:.4%}, disagreement {disagreement:.3g}{limit}", c.what, c.fp32.size)


def _compare_floats(c: Compared, budget: Optional[float], constant_atol: float) -> OutputResult:
    a64, b64 = c.fp32, c.int8
    finite_a, finite_b = np.isfinite(a64), np.isfinite(b64)
    if not (finite_a.all() and finite_b.all()):
        bad, mask = ("fp32", finite_a) if not finite_a.all() else ("int8", finite_b)
        # On the stress set, noise the fp32 model itself cannot digest says nothing of the int8.
        excused = budget is None and bad == "fp32"
        return OutputResult(c.name, None, float("inf"), False, False, excused,
                            f"{bad} output {c.name!r} has {int(np.sum(~mask))} NaN or infinite values"
                            + (" on noise: the stress check does not apply" if excused else ""), c.what, a64.size)
    delta = float(np.max(np.abs(a64 - b64))) if a64.size else 0.0
    if a64.size < 2 or a64.std() == 0 or b64.std() == 0:
        ok = budget is None or delta <= constant_atol  # the stress set judges finiteness only
        why = "a single value" if a64.size < 2 else "constant output"
        verdict = "reported, not judged (stress check)" if budget is None else \
            f"{'<=' if ok else '>'} tolerance {constant_atol:g}"
        return OutputResult(c.name, None, delta, a64.size >= 2, True, ok,
                            f"{why}: Pearson r undefined; worst |delta| {delta:.3g} {verdict}", c.what, a64.size)
    d = pearson_drop(a64, b64)
    ok = budget is None or d <= budget
    limit = "reported, not judged (stress check)" if budget is None else f"{'<=' if ok else '>'} budget {budget:g}"
    on = "" if c.what == "output" else f" on the {c.what}"
    return OutputResult(c.name, d, delta, False, True, ok, f"drop{on} {d:.3g} {limit}", c.what, a64.size)


def compare_outputs(compared: Sequence[Compared], budget: Optional[float], constant_atol: float) -> List[OutputResult]:
    """Labels by disagreement rate, floats by Pearson drop; budget None judges finiteness only."""
    return [_compare_labels(c, budget) if c.what == "labels" else _compare_floats(c, budget, constant_atol) for c in compared]


def _skipped(skipped: Dict[str, str]) -> List[OutputResult]:
    return [OutputResult(name, None, None, False, True, True,
                         f"skipped: a {kind} output (skl2onnx's ZipMap) has no tensor to compare; {ZIPMAP_FIX}", "skipped")
            for name, kind in skipped.items()]


@dataclass
class SetRun:
    """One input set through both models: the verdict, the raw tensor outputs, and the float
    values as compared (for the scatter plot)."""

    result: SetResult
    fp32: List[np.ndarray]
    int8: List[np.ndarray]
    compared_fp32: np.ndarray
    compared_int8: np.ndarray


def judge_set(input_set: str, sess32, sess8, feeds: Dict[str, np.ndarray], budget: Optional[float],
              constant_atol: float) -> SetRun:
    """Runs both models on one input set and compares every output."""
    names, skipped = tensor_outputs(sess32)
    if [o.name for o in sess8.get_outputs()] != [o.name for o in sess32.get_outputs()]:
        raise GateError(f"int8 outputs {[o.name for o in sess8.get_outputs()]} differ from fp32 outputs "
                        f"{[o.name for o in sess32.get_outputs()]}")
    if not names:
        raise GateError(f"no tensor output to compare (outputs: {skipped}); {ZIPMAP_FIX}")
    ref, out = run_all(sess32, feeds), run_all(sess8, feeds)
    for name, a, b in zip(names, ref, out):
        if a.shape != b.shape:
            raise GateError(f"output {name!r}: int8 shape {list(b.shape)} differs from fp32 {list(a.shape)}")
    compared = compared_outputs(names, ref, out, feeds)
    outputs = compare_outputs(compared, budget, constant_atol)
    floats = [(c, o) for c, o in zip(compared, outputs) if c.what != "labels"]
    a = np.concatenate([c.fp32 for c, _ in floats]) if floats else np.zeros(0)
    b = np.concatenate([c.int8 for c, _ in floats]) if floats else np.zeros(0)
    agg = pearson_drop(a, b) if floats and all(o.drop is not None for _, o in floats) else None
    passed = all(o.passed for o in outputs) and (budget is None or agg is None or agg <= budget)
    n = len(next(iter(feeds.values())))
    return SetRun(SetResult(input_set, n, outputs + _skipped(skipped), agg, passed, budget), ref, out, a, b)


def task_metrics(feeds: Dict[str, np.ndarray], names: Sequence[str], outputs: List[np.ndarray],
                 target: np.ndarray) -> Dict[str, float]:
    """Agreement with the ground truth, on the first output the target fits: PSNR gain for an
    image-to-image output, accuracy for labels, PLCC/SROCC/RMSE for scores. Empty when none fits."""
    from tinyq.metrics import filter_metrics, quality_metrics

    fits = [i for i, o in enumerate(outputs) if o.size == target.size and o.size >= 2]
    if not fits:
        return {}
    i = next((j for j in fits if outputs[j].shape == target.shape), fits[0])
    residual = residual_inputs(names, outputs, feeds)
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


def scatter_png(path: Path, model_id: str, sets: Sequence[Tuple[str, np.ndarray, np.ndarray, Optional[float]]]) -> None:
    """fp32 against int8 values as the gate compared them (residuals for image-to-image outputs),
    for each input set, with the identity line; at most 20 000 points a set, chosen with seed 0."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinyq.fileio import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    lo, hi = np.inf, -np.inf
    for label, a, b, drop in sets:
        if a.size > 20000:
            idx = np.random.default_rng(0).choice(a.size, 20000, replace=False)
            a, b = a[idx], b[idx]
        text = "n/a" if drop is None else f"{drop:.2e}"
        ax.scatter(a, b, s=4, alpha=0.5, linewidths=0, label=f"{label} (drop {text})")
        lo, hi = min(lo, a.min(), b.min()), max(hi, a.max(), b.max())
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, label="identity")
    ax.set_xlabel("fp32 (output, or residual output - input)")
    ax.set_ylabel("int8")
    ax.set_title(model_id, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


@dataclass(frozen=True)
class Budgets:
    """What the registry (or the flags) allow: the drop on real data, optionally the drop on the
    synthetic set, and the share of a filter's PSNR gain the int8 may lose."""

    plcc: float
    synthetic: Optional[float] = None
    task: float = DEFAULT_TASK_BUDGET

    @classmethod
    def of_entry(cls, entry) -> "Budgets":
        """A registry entry's budgets: quant_accuracy_budget_plcc, quant_synthetic_budget_plcc, quant_task_budget."""
        raw = entry.raw
        return cls(entry.budget_plcc, raw.get("quant_synthetic_budget_plcc"), float(raw.get("quant_task_budget", DEFAULT_TASK_BUDGET)))

    def overridden(self, plcc: Optional[float] = None, synthetic: Optional[float] = None,
                   task: Optional[float] = None) -> "Budgets":
        """These budgets with every value given (from a flag) replacing its own."""
        given = {k: v for k, v in (("plcc", plcc), ("synthetic", synthetic), ("task", task)) if v is not None}
        return replace(self, **given)


def _synthetic_run(model_id: str, sess32, sess8, real: Optional[Dict[str, np.ndarray]], budgets: Budgets,
                   input_shapes: Dict[str, Tuple[int, ...]], constant_atol: float, notes: List[str]) -> Optional[SetRun]:
    sample_shapes = {n: tuple(v.shape[1:]) for n, v in (real or {}).items()}
    try:
        synth = synthetic_inputs(sess32, model_id, sample_shapes, input_shapes)
    except GateError as e:
        if real is None:
            raise
        notes.append(f"synthetic stress check skipped: {e}")
        return None
    budget = budgets.plcc if real is None else budgets.synthetic
    return judge_set("synthetic", sess32, sess8, synth, budget, constant_atol)


def judge(model_id: str, fp32: str, int8: str, sess32, sess8, budgets: Budgets, *,
          real: Optional[Dict[str, np.ndarray]] = None, real_label: str = "soak",
          input_shapes: Optional[Dict[str, Tuple[int, ...]]] = None,
          constant_atol: float = DEFAULT_CONSTANT_ATOL) -> Tuple[ModelResult, Dict[str, SetRun]]:
    """The verdict: the budget on real data where there is some (its `target`, if present, for the
    task metric), the synthetic set as a stress check; on the synthetic set alone otherwise."""
    from tinyq.calibration import TARGET_KEY

    names = [i.name for i in sess32.get_inputs()]
    result = ModelResult(model_id, fp32, int8, budgets.plcc, [], judged_on=real_label if real is not None else "synthetic")
    runs: Dict[str, SetRun] = {}
    feeds = {n: real[n] for n in names} if real is not None else None
    if feeds is not None:
        runs[real_label] = judge_set(real_label, sess32, sess8, feeds, budgets.plcc, constant_atol)
        run = runs[real_label]
        if TARGET_KEY in real and all(o.finite for o in run.result.outputs):
            out_names, _ = tensor_outputs(sess32)
            task32 = task_metrics(feeds, out_names, run.fp32, real[TARGET_KEY])
            if task32:
                result.task = {"fp32": task32, "int8": task_metrics(feeds, out_names, run.int8, real[TARGET_KEY])}
                result.task_check = check_task(result.task, budgets.task)
    else:
        result.notes.append("judged on synthetic data only (uniform noise): no real data was given; "
                            "pass --data X.npz with real inputs for a verdict that means something")
    synthetic = _synthetic_run(model_id, sess32, sess8, feeds, budgets, input_shapes or {}, constant_atol, result.notes)
    if synthetic is not None:
        runs["synthetic"] = synthetic
    result.sets = [r.result for r in runs.values()]
    return result, runs


def _check_inputs_match(model_id: str, sess32, sess8) -> None:
    in32, in8 = [i.name for i in sess32.get_inputs()], [i.name for i in sess8.get_inputs()]
    if in32 != in8:
        raise GateError(f"{model_id}: int8 inputs {in8} differ from fp32 inputs {in32}")


def gate_model(model_id: str, fp32: Path, int8: Path, budgets: Budgets, *,
               real: Optional[Dict[str, np.ndarray]] = None, real_label: str = "soak",
               input_shapes: Optional[Dict[str, Tuple[int, ...]]] = None,
               constant_atol: float = DEFAULT_CONSTANT_ATOL, latency: bool = True,
               plot: Optional[Path] = None) -> ModelResult:
    """Judges one int8 model against its fp32 source; raises GateError when it cannot."""
    sess32 = load_session(fp32, "fp32", model_id)
    sess8 = load_session(int8, "int8", model_id)
    _check_inputs_match(model_id, sess32, sess8)
    try:
        result, runs = judge(model_id, str(fp32), str(int8), sess32, sess8, budgets, real=real, real_label=real_label,
                             input_shapes=input_shapes, constant_atol=constant_atol)
    except GateError as e:
        raise GateError(f"{model_id}: {e}" if not str(e).startswith(model_id) else str(e)) from None
    except Exception as e:  # onnxruntime rejects the feeds: wrong shapes for this graph
        raise GateError(f"{model_id}: running the models failed: {e}") from None
    if latency:
        _measure_latency(result, sess32, sess8, real, input_shapes or {}, model_id)
    plotted = [(label, r.compared_fp32, r.compared_int8, r.result.aggregate_drop) for label, r in runs.items()
               if r.compared_fp32.size and np.all(np.isfinite(r.compared_fp32)) and np.all(np.isfinite(r.compared_int8))]
    if plot is not None and plotted:
        scatter_png(plot, model_id, plotted)
        result.scatter_png = str(plot)
    return result


def _measure_latency(result: ModelResult, sess32, sess8, real, input_shapes, model_id: str) -> None:
    """Latency on the real data where there is some; a failure is reported, never raised: the
    accuracy verdict stands."""
    try:
        names = [i.name for i in sess32.get_inputs()]
        timed = {n: real[n] for n in names} if real is not None else synthetic_inputs(sess32, model_id, {}, input_shapes)
        result.latency_ms = {which: latency_table(sess, timed, 50) for which, sess in (("fp32", sess32), ("int8", sess8))}
    except Exception as e:  # noqa: BLE001 - latency informs only
        result.latency_error = f"{type(e).__name__}: {e}"


def as_row(r: ModelResult) -> Dict[str, object]:
    """A JSON-ready report row."""
    return {
        "id": r.id,
        "fp32": r.fp32,
        "int8": r.int8,
        "budget": r.budget,
        "pass": r.passed,
        "judged_on": r.judged_on,
        "synthetic_only": r.synthetic_only,
        "worst_drop": r.worst_drop,
        "sets": [
            {
                "input_set": s.input_set,
                "samples": s.samples,
                "budget": s.budget,
                "aggregate_drop": s.aggregate_drop,
                "pass": s.passed,
                "outputs": [o.__dict__ for o in s.outputs],
            }
            for s in r.sets
        ],
        "task": r.task,
        "task_check": None if r.task_check is None else r.task_check.__dict__,
        "notes": r.notes,
        "latency_ms": r.latency_ms,
        "latency_error": r.latency_error,
        "scatter_png": r.scatter_png,
    }


_TASK_LABELS = {"psnr_gain_db": "PSNR gain (dB)", "plcc": "PLCC vs target", "accuracy": "accuracy vs target"}


def _task_text(r: ModelResult) -> str:
    key = next((k for k in _TASK_LABELS if k in r.task.get("fp32", {})), None)
    if key is None:
        return ""
    text = f"{_TASK_LABELS[key]} {r.task['fp32'][key]:.5f} → {r.task['int8'][key]:.5f}"
    if r.task_check is not None and r.task_check.kept is not None:
        text += f" (kept {r.task_check.kept:.1%})"
    return text


def markdown(results: Sequence[ModelResult]) -> str:
    lines = [
        "| model | input set | samples | budget | drop (all outputs) | worst \\|Δ\\| | task metric fp32 → int8 | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for s in r.sets:
            drop = "n/a" if s.aggregate_drop is None else f"{s.aggregate_drop:.3e}"
            deltas = [o.worst_abs_delta for o in s.outputs if o.worst_abs_delta is not None]
            worst = f"{max(deltas):.3g}" if deltas else ""
            budget = "finite only (stress)" if s.budget is None else f"{s.budget:g}"
            failures = [o.reason for o in s.outputs if not o.passed]
            judged = s.input_set == r.judged_on
            if judged and r.task_check is not None and not r.task_check.passed:
                failures.append(r.task_check.reason)
            verdict = "pass" if not failures and s.passed else "FAIL: " + "; ".join(failures or ["aggregate drop over budget"])
            if judged and r.synthetic_only:
                verdict += " (synthetic data only)"
            lines.append(f"| {r.id} | {s.input_set} | {s.samples} | {budget} | {drop} | {worst} | "
                         f"{_task_text(r) if judged else ''} | {verdict} |")
    return "\n".join(lines) + "\n"
