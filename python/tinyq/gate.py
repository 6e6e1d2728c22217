"""The accuracy gate: an int8 model against its fp32 source on the same inputs.

Two input sets are fed to every input, and every output is compared:
  - the model's soak fixture, real held-out data (registry models);
  - the reference recipe's synthetic set: 16 samples, uniform [0, 1), seed 0, with dynamic
    dimensions sized from the fixture, the sidecar or --input-shape, never forced to 1.
Per output and aggregated: drop = 1 - Pearson r in float64, and the worst absolute delta.
A NaN or infinite output fails the model. A constant output, where Pearson r is undefined, is
reported as such and judged by its worst absolute delta against a stated tolerance. On the soak
fixture the task metric (PLCC against VMAF, or PSNR gain for the filter) is computed for fp32 and
int8 against the ground truth. Latency at batch 1 and 256 is reported, not gated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
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


def run_all(sess, feeds: Dict[str, np.ndarray], batch: int = 256) -> List[np.ndarray]:
    """Every output of the model over every sample, fed in batches."""
    n = len(next(iter(feeds.values())))
    chunks: List[List[np.ndarray]] = []
    for i in range(0, n, batch):
        chunks.append(sess.run(None, {k: v[i : i + batch] for k, v in feeds.items()}))
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def pearson_drop(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Pearson r of two output sets, in float64."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(1.0 - np.corrcoef(a, b)[0, 1])


def median_latency_ms(sess, feeds: Dict[str, np.ndarray], batch: int, repeats: int) -> float:
    """Median wall time of one run at this batch size, after a warm-up run."""
    n = len(next(iter(feeds.values())))
    idx = np.arange(batch) % n
    x = {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}
    sess.run(None, x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


LATENCY_BATCHES = (1, 256)


def latency_table(sess, feeds: Dict[str, np.ndarray], repeats: int) -> Dict[str, float]:
    """Median ms at each of LATENCY_BATCHES; batch 256 runs a tenth as many times (at least 5)."""
    return {str(b): median_latency_ms(sess, feeds, b, repeats if b == 1 else max(5, repeats // 10)) for b in LATENCY_BATCHES}


def inputs_only(arrays: Dict[str, np.ndarray], names: Sequence[str]) -> Dict[str, np.ndarray]:
    return {k: arrays[k] for k in names}


# --- the gate --------------------------------------------------------------------------------

SYNTHETIC_SAMPLES = 16
SYNTHETIC_SEED = 0
DEFAULT_CONSTANT_ATOL = 1e-3


class GateError(Exception):
    """Cannot judge the model (missing file, bad shapes, a session that fails): exit 2."""


@dataclass
class OutputResult:
    name: str
    drop: Optional[float]  # None when Pearson r is undefined (a constant output)
    worst_abs_delta: float
    constant: bool
    finite: bool
    passed: bool
    reason: str


@dataclass
class SetResult:
    input_set: str  # "soak" or "synthetic"
    samples: int
    outputs: List[OutputResult]
    aggregate_drop: Optional[float]
    passed: bool


@dataclass
class ModelResult:
    id: str
    fp32: str
    int8: str
    budget: float
    sets: List[SetResult]
    task: Dict[str, Dict[str, float]] = field(default_factory=dict)  # {"fp32": {...}, "int8": {...}}
    latency_ms: Dict[str, Dict[str, float]] = field(default_factory=dict)
    scatter_png: Optional[str] = None

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.sets)

    @property
    def worst_drop(self) -> Optional[float]:
        drops = [o.drop for s in self.sets for o in s.outputs if o.drop is not None]
        return max(drops) if drops else None


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
    """The reference recipe's set: 16 samples, uniform [0, 1), seed 0, every input, real shapes.

    A dynamic dimension takes its size from --input-shape, else from the soak fixture's samples;
    only a dynamic batch axis defaults (to 16). Nothing is ever forced to 1.
    """
    rng = np.random.default_rng(SYNTHETIC_SEED)
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name in overrides:
            shape = overrides[inp.name]
            if len(shape) != len(inp.shape) or any(isinstance(d, int) and d != s for d, s in zip(inp.shape, shape)):
                raise GateError(f"{model_id}: --input-shape {inp.name}={','.join(map(str, shape))} does not fit the "
                                f"input's declared shape {list(inp.shape)}")
        elif inp.name in sample_shapes:
            shape = (SYNTHETIC_SAMPLES, *sample_shapes[inp.name])
        else:
            dims = []
            for axis, d in enumerate(inp.shape):
                if isinstance(d, int) and d > 0:
                    dims.append(d)
                elif axis == 0:
                    dims.append(SYNTHETIC_SAMPLES)
                else:
                    raise GateError(
                        f"{model_id}: input {inp.name!r} has a dynamic dimension {d!r} at axis {axis} (shape {list(inp.shape)}) "
                        f"and no fixture to size it; pass --input-shape {inp.name}=<d0,d1,...>"
                    )
            shape = tuple(dims)
        if inp.type != "tensor(float)":
            raise GateError(f"{model_id}: input {inp.name!r} is {inp.type}; the gate feeds float32 inputs only")
        feeds[inp.name] = rng.random(shape, dtype=np.float32)
    return feeds


def compare_outputs(names: Sequence[str], ref: Sequence[np.ndarray], out: Sequence[np.ndarray], budget: float,
                    constant_atol: float) -> List[OutputResult]:
    results = []
    for name, a, b in zip(names, ref, out):
        a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        finite = bool(np.all(np.isfinite(a64)) and np.all(np.isfinite(b64)))
        if not finite:
            bad = "fp32" if not np.all(np.isfinite(a64)) else "int8"
            n = int(np.sum(~np.isfinite(b64 if bad == "int8" else a64)))
            results.append(OutputResult(name, None, float("inf"), False, False, False,
                                        f"{bad} output {name!r} has {n} NaN or infinite values"))
            continue
        delta = float(np.max(np.abs(a64 - b64))) if a64.size else 0.0
        if a64.std() == 0 or b64.std() == 0:
            ok = delta <= constant_atol
            results.append(OutputResult(name, None, delta, True, True, ok,
                                        f"constant output: Pearson r undefined; worst |delta| {delta:.3g} "
                                        f"{'<=' if ok else '>'} tolerance {constant_atol:g}"))
            continue
        d = pearson_drop(a64, b64)
        ok = d <= budget
        results.append(OutputResult(name, d, delta, False, True, ok, f"drop {d:.3g} {'<=' if ok else '>'} budget {budget:g}"))
    return results


def judge_set(input_set: str, sess32, sess8, feeds: Dict[str, np.ndarray], budget: float,
              constant_atol: float) -> Tuple[SetResult, List[np.ndarray], List[np.ndarray]]:
    names = [o.name for o in sess32.get_outputs()]
    ref, out = run_all(sess32, feeds), run_all(sess8, feeds)
    if [o.name for o in sess8.get_outputs()] != names:
        raise GateError(f"int8 outputs {[o.name for o in sess8.get_outputs()]} differ from fp32 outputs {names}")
    for name, a, b in zip(names, ref, out):
        if a.shape != b.shape:
            raise GateError(f"output {name!r}: int8 shape {list(b.shape)} differs from fp32 {list(a.shape)}")
    outputs = compare_outputs(names, ref, out, budget, constant_atol)
    agg = None
    if all(o.finite and not o.constant for o in outputs):
        agg = pearson_drop(np.concatenate([r.ravel() for r in ref]), np.concatenate([o.ravel() for o in out]))
    passed = all(o.passed for o in outputs) and (agg is None or agg <= budget)
    n = len(next(iter(feeds.values())))
    return SetResult(input_set, n, outputs, agg, passed), ref, out


def _task(kind: str, feeds: Dict[str, np.ndarray], outputs: List[np.ndarray], target: np.ndarray) -> Dict[str, float]:
    from tinyq.metrics import filter_metrics, quality_metrics

    if kind == "filter":
        return filter_metrics(outputs[0], next(iter(feeds.values())), target)
    return quality_metrics(outputs[0], target)


def scatter_png(path: Path, model_id: str, sets: Sequence[Tuple[str, List[np.ndarray], List[np.ndarray], Optional[float]]]) -> None:
    """fp32 against int8 outputs of each input set, with the identity line; at most 20 000 points
    a set, chosen with seed 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinyq.fileio import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    lo, hi = np.inf, -np.inf
    for label, ref, out, drop in sets:
        a = np.concatenate([r.ravel() for r in ref]).astype(np.float64)
        b = np.concatenate([o.ravel() for o in out]).astype(np.float64)
        if a.size > 20000:
            idx = np.random.default_rng(0).choice(a.size, 20000, replace=False)
            a, b = a[idx], b[idx]
        text = "n/a" if drop is None else f"{drop:.2e}"
        ax.scatter(a, b, s=4, alpha=0.5, linewidths=0, label=f"{label} (drop {text})")
        lo, hi = min(lo, a.min(), b.min()), max(hi, a.max(), b.max())
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, label="identity")
    ax.set_xlabel("fp32 output")
    ax.set_ylabel("int8 output")
    ax.set_title(model_id, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def gate_model(
    model_id: str,
    fp32: Path,
    int8: Path,
    budget: float,
    *,
    kind: Optional[str] = None,
    fixture: Optional[Dict[str, np.ndarray]] = None,
    input_shapes: Optional[Dict[str, Tuple[int, ...]]] = None,
    constant_atol: float = DEFAULT_CONSTANT_ATOL,
    latency: bool = True,
    plot: Optional[Path] = None,
) -> ModelResult:
    """Judges one int8 model against its fp32 source; raises GateError when it cannot."""
    sess32 = load_session(fp32, "fp32", model_id)
    sess8 = load_session(int8, "int8", model_id)
    in32 = [(i.name, i.shape) for i in sess32.get_inputs()]
    in8 = [(i.name, i.shape) for i in sess8.get_inputs()]
    if [n for n, _ in in32] != [n for n, _ in in8]:
        raise GateError(f"{model_id}: int8 inputs {[n for n, _ in in8]} differ from fp32 inputs {[n for n, _ in in32]}")
    names = [n for n, _ in in32]
    result = ModelResult(model_id, str(fp32), str(int8), budget, [])
    sample_shapes: Dict[str, Tuple[int, ...]] = {}
    plotted = []
    try:
        if fixture is not None:
            from tinyq.calibration import TARGET_KEY

            feeds = {n: fixture[n] for n in names}
            sample_shapes = {n: tuple(v.shape[1:]) for n, v in feeds.items()}
            soak, ref, out = judge_set("soak", sess32, sess8, feeds, budget, constant_atol)
            result.sets.append(soak)
            plotted.append(("soak", ref, out, soak.aggregate_drop))
            if kind and TARGET_KEY in fixture and all(o.finite for o in soak.outputs):
                result.task = {"fp32": _task(kind, feeds, ref, fixture[TARGET_KEY]), "int8": _task(kind, feeds, out, fixture[TARGET_KEY])}
        synth = synthetic_inputs(sess32, model_id, sample_shapes, input_shapes or {})
        syn, ref, out = judge_set("synthetic", sess32, sess8, synth, budget, constant_atol)
        result.sets.append(syn)
        plotted.append(("synthetic", ref, out, syn.aggregate_drop))
        if latency:  # on the real data where there is some
            timed = feeds if fixture is not None else synth
            result.latency_ms = {which: latency_table(sess, timed, 50) for which, sess in (("fp32", sess32), ("int8", sess8))}
    except GateError as e:
        raise GateError(f"{model_id}: {e}" if not str(e).startswith(model_id) else str(e)) from None
    except Exception as e:  # onnxruntime rejects the feeds: wrong shapes for this graph
        raise GateError(f"{model_id}: running the models failed: {e}") from None
    finite = [p for p in plotted if all(np.all(np.isfinite(x)) for x in (*p[1], *p[2]))]
    if plot is not None and finite:
        scatter_png(plot, model_id, finite)
        result.scatter_png = str(plot)
    return result


def as_row(r: ModelResult) -> Dict[str, object]:
    """A JSON-ready report row."""
    return {
        "id": r.id,
        "fp32": r.fp32,
        "int8": r.int8,
        "budget": r.budget,
        "pass": r.passed,
        "worst_drop": r.worst_drop,
        "sets": [
            {
                "input_set": s.input_set,
                "samples": s.samples,
                "aggregate_drop": s.aggregate_drop,
                "pass": s.passed,
                "outputs": [o.__dict__ for o in s.outputs],
            }
            for s in r.sets
        ],
        "task": r.task,
        "latency_ms": r.latency_ms,
        "scatter_png": r.scatter_png,
    }


def markdown(results: Sequence[ModelResult]) -> str:
    lines = [
        "| model | input set | samples | drop (all outputs) | worst \\|Δ\\| | budget | task metric fp32 → int8 | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        task = ""
        if r.task:
            key = "psnr_gain_db" if "psnr_gain_db" in r.task["fp32"] else "plcc"
            label = "PSNR gain (dB)" if key == "psnr_gain_db" else "PLCC vs VMAF"
            task = f"{label} {r.task['fp32'][key]:.5f} → {r.task['int8'][key]:.5f}"
        for s in r.sets:
            drop = "n/a (constant)" if s.aggregate_drop is None else f"{s.aggregate_drop:.3e}"
            worst = max(o.worst_abs_delta for o in s.outputs)
            verdict = "pass" if s.passed else "FAIL: " + "; ".join(o.reason for o in s.outputs if not o.passed)
            lines.append(f"| {r.id} | {s.input_set} | {s.samples} | {drop} | {worst:.3g} | {r.budget:g} | "
                         f"{task if s.input_set == 'soak' else ''} | {verdict} |")
    return "\n".join(lines) + "\n"
