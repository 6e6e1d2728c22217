"""The drop: one definition, used by the gate, ptq_auto, bench_peers and the per-EP harness.

Per output, fp32 against int8 over every sample of a set:
  - a float output is compared on itself, or on its residual (output - input) where it is
    declared a residual of that input (a filter's restored image, `residual_of`); never because
    of its shape alone;
  - drop = 1 - Pearson r in float64, when both vary;
  - fp32 varies and int8 is constant (no spread beyond float32 rounding of the output's scale):
    the int8 lost the whole signal, drop 1;
  - fp32 constant: Pearson r is undefined, so the worst |delta| is judged against a tolerance
    relative to the output's scale (CONSTANT_RTOL x the largest |fp32 value|, at least
    CONSTANT_FLOOR), stated in the reason;
  - integer outputs (labels): drop = the disagreement rate;
  - a NaN or infinite value fails the output; one value alone cannot be judged;
  - sequence and map outputs (skl2onnx's ZipMap) are skipped and not judged.
A set's drop is the worst judged output's; a set where no output was judged has no verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

CONSTANT_RTOL = 1e-3
CONSTANT_FLOOR = 1e-6  # the tolerance's floor, for an output that is constant at 0
# Values vary only beyond float32 rounding: a residual x + 0 - x is "constant" though rounding
# leaves ~1e-8 of noise in it.
ROUNDING = 4 * float(np.finfo(np.float32).eps)
ZIPMAP_FIX = "re-export without it: skl2onnx's convert_sklearn(..., options={id(model): {'zipmap': False}})"


@dataclass
class OutputResult:
    name: str
    drop: Optional[float]  # None where the output was not judged by its drop (constant fp32, skipped, one value)
    worst_abs_delta: Optional[float]
    constant: bool
    finite: bool
    passed: bool
    reason: str
    compared: str = "output"  # "output", "residual vs <input>", "labels" or "skipped"
    values: int = 0  # how many values were compared
    judged: bool = True  # False: skipped, or a single value; nothing was judged
    tolerance: Optional[float] = None  # the |delta| tolerance, for a constant fp32 output


@dataclass
class Compared:
    """One output as the drop compares it: labels, or float64 values (the residual where the
    output is declared one)."""

    name: str
    fp32: np.ndarray
    int8: np.ndarray
    what: str  # "output", "residual vs <input>" or "labels"
    scale: float = 0.0  # the largest |fp32 output value| (before any residual is taken)


def pearson_drop(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Pearson r of two output sets, in float64."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(1.0 - np.corrcoef(a, b)[0, 1])


def compared_outputs(names: Sequence[str], ref: Sequence[np.ndarray], out: Sequence[np.ndarray],
                     feeds: Dict[str, np.ndarray], residual: Dict[str, str]) -> List[Compared]:
    """Each output as compared: on the residual only where `residual` declares it ({output: input})."""
    result = []
    for name, a, b in zip(names, ref, out):
        if a.dtype.kind in "iub":
            result.append(Compared(name, a.ravel(), b.ravel(), "labels"))
            continue
        a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
        scale = float(np.max(np.abs(a64))) if a64.size and np.all(np.isfinite(a64)) else 0.0
        if name in residual:
            x = np.asarray(feeds[residual[name]], np.float64).ravel()
            result.append(Compared(name, a64 - x, b64 - x, f"residual vs {residual[name]}", scale))
        else:
            result.append(Compared(name, a64, b64, "output", scale))
    return result


def compare_labels(c: Compared, budget: Optional[float]) -> OutputResult:
    disagreement = float(np.mean(c.fp32 != c.int8)) if c.fp32.size else 0.0
    ok = budget is None or disagreement <= budget
    limit = "" if budget is None else f" {'<=' if ok else '>'} budget {budget:g}"
    return OutputResult(c.name, disagreement, None, False, True, ok,
                        f"labels: agreement {1 - disagreement:.4%}, disagreement {disagreement:.3g}{limit}", c.what,
                        c.fp32.size, judged=c.fp32.size > 0)


def _not_finite(c: Compared, budget: Optional[float]) -> OutputResult:
    finite_a = np.isfinite(c.fp32)
    bad, mask = ("fp32", finite_a) if not finite_a.all() else ("int8", np.isfinite(c.int8))
    # On the stress set, noise the fp32 model itself cannot digest says nothing of the int8.
    excused = budget is None and bad == "fp32"
    return OutputResult(c.name, None, float("inf"), False, False, excused,
                        f"{bad} output {c.name!r} has {int(np.sum(~mask))} NaN or infinite values"
                        + (" on noise: the stress check does not apply" if excused else ""), c.what, c.fp32.size)


def _constant_fp32(c: Compared, budget: Optional[float], delta: float) -> OutputResult:
    """fp32 constant: Pearson r is undefined; |delta| against CONSTANT_RTOL of the output's scale."""
    tol = max(CONSTANT_RTOL * c.scale, CONSTANT_FLOOR)
    ok = budget is None or delta <= tol
    verdict = "reported, not judged (stress check)" if budget is None else \
        f"{'<=' if ok else '>'} tolerance {tol:.3g} ({CONSTANT_RTOL:g} x the output's scale {c.scale:.3g})"
    return OutputResult(c.name, None, delta, True, True, ok,
                        f"constant fp32 output: Pearson r undefined; worst |delta| {delta:.3g} {verdict}",
                        c.what, c.fp32.size, tolerance=tol)


def compare_floats(c: Compared, budget: Optional[float]) -> OutputResult:
    """The drop of one float output; budget None judges finiteness only (the stress set)."""
    a64, b64 = c.fp32, c.int8
    if not (np.isfinite(a64).all() and np.isfinite(b64).all()):
        return _not_finite(c, budget)
    delta = float(np.max(np.abs(a64 - b64))) if a64.size else 0.0
    if a64.size < 2:
        return OutputResult(c.name, None, delta, False, True, True, "a single value: Pearson r undefined; not judged",
                            c.what, a64.size, judged=False)
    still = ROUNDING * max(c.scale, CONSTANT_FLOOR)
    if a64.std() <= still:
        return _constant_fp32(c, budget, delta)
    on = "" if c.what == "output" else f" on the {c.what}"
    if b64.std() <= still:
        ok = budget is None
        unjudged = "; reported, not judged (stress check)" if budget is None else ""
        return OutputResult(c.name, 1.0, delta, True, True, ok,
                            f"drop{on} 1 (int8 output is constant where fp32 varies: the signal is lost){unjudged}",
                            c.what, a64.size)
    d = pearson_drop(a64, b64)
    ok = budget is None or d <= budget
    limit = "reported, not judged (stress check)" if budget is None else f"{'<=' if ok else '>'} budget {budget:g}"
    return OutputResult(c.name, d, delta, False, True, ok, f"drop{on} {d:.3g} {limit}", c.what, a64.size)


def compare(compared: Sequence[Compared], budget: Optional[float]) -> List[OutputResult]:
    """Labels by disagreement rate, floats by Pearson drop; budget None judges finiteness only."""
    return [compare_labels(c, budget) if c.what == "labels" else compare_floats(c, budget) for c in compared]


def skipped(outputs: Dict[str, str]) -> List[OutputResult]:
    return [OutputResult(name, None, None, False, True, True,
                         f"skipped: a {kind} output (skl2onnx's ZipMap) has no tensor to compare; {ZIPMAP_FIX}",
                         "skipped", judged=False)
            for name, kind in outputs.items()]


def worst(outputs: Sequence[OutputResult]) -> Optional[float]:
    """The set's drop: the worst drop among the judged outputs (None: none has a drop)."""
    drops = [o.drop for o in outputs if o.judged and o.drop is not None]
    return max(drops) if drops else None


def any_judged(outputs: Sequence[OutputResult]) -> bool:
    return any(o.judged for o in outputs)


def residual_pairs(residual_of, kind: Optional[str], inputs: Sequence[str], outputs: Sequence[str]) -> Dict[str, str]:
    """{output: input} for the outputs declared residuals: `residual_of` names the input the first
    output restores (a string) or maps outputs to inputs; a `filter` with one input restores it in
    its first output. Anything else is judged on itself. ValueError names what does not fit."""
    if residual_of is None:
        if kind != "filter":
            return {}
        if len(inputs) != 1:
            raise ValueError(f"a filter with {len(inputs)} inputs {list(inputs)} must name the input it restores: "
                             f"residual_of (registry) or --residual-of OUTPUT=INPUT")
        residual_of = inputs[0]
    pairs = {outputs[0]: residual_of} if isinstance(residual_of, str) else dict(residual_of)
    for out, inp in pairs.items():
        if out not in outputs:
            raise ValueError(f"residual_of names output {out!r}, which the model does not have (outputs: {list(outputs)})")
        if inp not in inputs:
            raise ValueError(f"residual_of names input {inp!r}, which the model does not have (inputs: {list(inputs)})")
    return pairs


def declared_residuals(residual_of, kind: Optional[str], model) -> Dict[str, str]:
    """residual_pairs() against an onnx.ModelProto's graph inputs (initialisers excluded) and outputs."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    return residual_pairs(residual_of, kind, inputs, [o.name for o in model.graph.output])


def parse_residual_flags(values: Sequence[str]):
    """--residual-of INPUT (the first output restores INPUT) or OUTPUT=INPUT, repeatable; None when absent."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    pairs = {}
    for v in values:
        out, sep, inp = v.partition("=")
        if not (sep and out and inp):
            raise ValueError(f"--residual-of {v!r}: expected OUTPUT=INPUT (or a single INPUT for the first output)")
        pairs[out] = inp
    return pairs
