"""Auto mode: the fastest int8 configuration that stays within the accuracy budget.

Small classes with one job each, after NNCF's accuracy-control design:
  - fallback_groups() (tinyq.search.groups): the regions that must go back to fp32 together (ops with no int8 kernel,
    and the quantisable ops caught between them, e.g. an MSCN block from x**2 through its division);
  - CandidateBuilder: one int8 model per Candidate (weight-only, or static QDQ with uint8
    activations and int8 symmetric weights, per-tensor or per-channel, MinMax/Entropy/Percentile
    ranges computed once per method through onnxruntime's calibration cache, plain or range-robust
    (the calibration set plus noisy copies: tinyq.model.calibration.augmented), some groups in fp32);
  - Evaluator: the drop on the validation set (real val-split data, never the soak fixture) and
    on the shift set (the val split under stronger degradations), judged with the gate's own
    code, and a filter's kept PSNR gain;
  - tinyq.quant.fusion: how many compute ops still run as DequantizeLinear -> fp32 op in
    onnxruntime's optimised graph;
  - tinyq.search.latency.LatencyMeter: fp32 and int8 runs interleaved at batch 1 and 256 on one thread, medians;
  - search(): every subset of groups while there are at most EXHAUSTIVE_GROUPS groups, a greedy
    search over the groups ranked by their own accuracy gain beyond that; then the kernel-aware
    rewrites (tinyq.quant.rewrites) on the most accurate candidates within budget whose convolutions
    miss onnxruntime's fused int8 path;
  - slow layers (tinyq.search.layer_costs): the most accurate candidates within budget are profiled
    layer by layer against fp32, and the layers int8 makes slower are kept fp32 (then profiled
    again, once more): a model no candidate speeds up often has a few such layers;
  - choose(): the fastest candidate within budget; among those within the noise margin of it, the
    lowest drop, then the smallest file.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np
import onnx

from tinyq.judge import gate
from tinyq.model import calibration, runner, weights
from tinyq.quant import fusion, quantize, rewrites
from tinyq.search import budget, layer_costs
from tinyq.search.groups import FallbackGroup, fallback_groups  # noqa: F401  (fallback_groups re-exported)
from tinyq.search.latency import LatencyMeter, Timing

EXHAUSTIVE_GROUPS = 3  # every subset of up to 3 groups (8 subsets); a ranked greedy search beyond
METHODS = ("minmax", "entropy", "percentile")
MIN_MARGIN = 0.05  # a speed-up must beat fp32 by more than this (or the measured noise, if larger)


# --- candidates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    encoding: str  # "weight_only", "dynamic" (onnxruntime's quantize_dynamic) or "qdq"
    method: Optional[str] = None  # calibration: minmax, entropy, percentile
    per_channel: bool = False
    fp32_groups: Tuple[str, ...] = ()
    augment: bool = False  # range-robust calibration (tinyq.model.calibration.augmented)
    rewrites: Tuple[str, ...] = ()  # tinyq.quant.rewrites, in REWRITES order
    overflow_fix: str = "needed"  # tinyq.quant.overflow: 7-bit weights where needed, or on all integer layers
    fp32_layers: Tuple[str, ...] = ()  # heads of layers kept fp32 because int8 made them slower (layer_costs)

    @property
    def name(self) -> str:
        if self.encoding == "weight_only":
            return "weight_only" + ("_pc" if self.per_channel else "")
        if self.encoding == "dynamic":
            return f"dynamic_{'pc' if self.per_channel else 'pt'}"
        base = f"qdq_{self.method}_{'pc' if self.per_channel else 'pt'}" + ("+aug" if self.augment else "")
        fix = "+7bit_all" if self.overflow_fix == "all" else ""
        layers = f"+fp32_layers[{','.join(self.fp32_layers)}]" if self.fp32_layers else ""
        return (base + "".join(f"+fp32[{g}]" for g in self.fp32_groups) + layers + "".join(f"+{r}" for r in self.rewrites)
                + fix)


def base_candidates(model: Optional[onnx.ModelProto] = None) -> List[Candidate]:
    """Weight-only and dynamic (the latter where MatMul and Gemm hold most weights: attention,
    recurrent, MLP), per tensor and per channel; static QDQ in every calibration and granularity, ± augmented."""
    data_free = [Candidate("weight_only"), Candidate("weight_only", per_channel=True)]
    if model is not None and _matmul_heavy(model):
        data_free += [Candidate("dynamic", per_channel=pc) for pc in (False, True)]
    return data_free + [Candidate("qdq", m, pc, augment=a) for a in (False, True) for m in METHODS for pc in (False, True)]


def _matmul_heavy(model: onnx.ModelProto) -> bool:
    """At least half the weight elements feed a MatMul or Gemm: dynamic quantisation's integer MatMul
    can pay there; on a CNN with a linear head it runs ConvInteger, slower than fp32."""
    inits = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    per_op: Dict[str, int] = {}
    for n, name in weights.weight_inputs(model.graph.node):
        if name in inits:
            per_op[n.op_type] = per_op.get(n.op_type, 0) + inits[name]
    return 2 * (per_op.get("MatMul", 0) + per_op.get("Gemm", 0)) >= max(sum(per_op.values()), 1)


def with_groups(base: Candidate, groups: Sequence[str]) -> Candidate:
    return replace(base, fp32_groups=tuple(groups))


def with_rewrites(base: Candidate, names: Sequence[str]) -> Candidate:
    return replace(base, rewrites=tuple(n for n in rewrites.REWRITES if n in names))


class CandidateBuilder:
    """Builds each candidate's int8 bytes; calibration ranges are computed once per method and
    cached by onnxruntime (quantize_static's calibration_cache_path), then reused."""

    def __init__(self, model: onnx.ModelProto, calibration: Dict[str, np.ndarray], groups: Sequence[FallbackGroup],
                 workdir: Path, histogram_samples: Optional[int] = None):
        self.model = model
        self.calibration = calibration
        self.groups = {g.name: g for g in groups}
        self.workdir = workdir
        self.histogram_samples = histogram_samples  # Entropy and Percentile: at most this many (tinyq.search.budget)
        self.capped: Set[Tuple[str, bool]] = set()  # (method, augment) calibrated on that subset
        self._augmented: Optional[Dict[str, np.ndarray]] = None
        self.layer_of = layer_costs.layers(model)  # {node: its layer's head}

    def exclude(self, candidate: Candidate) -> List[str]:
        layers = set(candidate.fp32_layers)
        return sorted({n for name in candidate.fp32_groups for n in self.groups[name].quantizable}
                      | {n for n, head in self.layer_of.items() if head in layers})

    def build(self, candidate: Candidate, compact: bool = True) -> bytes:
        """The candidate's int8 bytes; compact=False keeps fp32 names, to profile layer by layer."""
        if candidate.encoding in ("weight_only", "dynamic"):  # ptq_dynamic --encoding, per tensor by default
            return quantize.encode(self.model, candidate.encoding, candidate.per_channel).model_bytes
        if candidate.augment and self._augmented is None:
            self._augmented = calibration.augmented(self.calibration)
        data = self._augmented if candidate.augment else self.calibration
        if self.histogram_samples and candidate.method in budget.HISTOGRAM_METHODS:
            capped = calibration.subset(data, self.histogram_samples)
            if capped is not data:
                self.capped.add((candidate.method, candidate.augment))
            data = capped
        cache = self.workdir / f"ranges_{candidate.method}{'_aug' if candidate.augment else ''}.json"
        return quantize.quantize_static_qdq(self.model, data, method=candidate.method, per_channel=candidate.per_channel,
                                            exclude_nodes=self.exclude(candidate), calibration_cache=cache,
                                            rewrites=candidate.rewrites, overflow_fix=candidate.overflow_fix,
                                            compact=compact)


# --- measurements --------------------------------------------------------------------------------


@dataclass
class Accuracy:
    drop: Optional[float]  # the validation set's worst-output drop, as the gate defines it
    kept_gain: Optional[float]
    within_budget: bool  # every judged set within its budget, and something judged
    reason: str
    shift_drop: Optional[float] = None


class Evaluator:
    """The gate's judgement (tinyq.judge.gate.judge) on the validation set, and on the shift set where
    one is given: the same worst-output drop the gate reports, the budgets, a filter's kept gain.
    Nothing judged (every output skipped) is never within budget."""

    def __init__(self, fp32_session, validation: Dict[str, np.ndarray], budgets: gate.Budgets,
                 residual: Optional[Dict[str, str]] = None, shift: Optional[Dict[str, np.ndarray]] = None):
        self.sess32 = fp32_session
        self.budgets = budgets
        self.validation = validation
        self.residual = residual or {}
        self.shift = shift

    def __call__(self, sess8) -> Accuracy:
        result, _ = gate.judge("validation", "fp32", "int8", self.sess32, sess8, self.budgets, real=self.validation,
                               real_label="validation", shift=self.shift, residual=self.residual)
        kept = result.task_check.kept if result.task_check is not None else None
        failures = [f"{s.input_set} {o.name!r}: {o.reason}" for s in result.sets for o in s.outputs if not o.passed]
        if not result.judged:
            failures.append("no output could be judged on the validation set")
        if result.task_check is not None and not result.task_check.passed:
            failures.append(result.task_check.reason)
        shift = result.set("shift")
        return Accuracy(result.worst_drop, kept, result.passed, "; ".join(failures),
                        None if shift is None else shift.drop)


# --- the search ----------------------------------------------------------------------------------


@dataclass
class Row:
    candidate: Candidate
    bytes: int
    accuracy: Accuracy
    unfused: List[str]
    timing: Dict[int, Timing] = field(default_factory=dict)
    int8: bytes = field(default=b"", repr=False)
    same_as: Optional[str] = None  # an earlier candidate that built byte-identical int8
    convs: List[rewrites.ConvKernel] = field(default_factory=list)  # QLinearConvs, fused path or not

    @property
    def conv_misses(self) -> List[str]:
        return [m for k in self.convs for m in k.misses]

    @property
    def speed_batch(self) -> int:
        return max(self.timing)

    def speedup(self, batch: Optional[int] = None) -> float:
        return self.timing[batch or self.speed_batch].speedup


@dataclass
class Measure:
    """Measures one candidate: builds it, judges its accuracy, inspects its fusion, times it."""

    builder: CandidateBuilder
    evaluator: Evaluator
    meter: LatencyMeter
    progress: Callable[[str], None]
    rows: Dict[Candidate, Row] = field(default_factory=dict)
    layer_tables: Dict[str, List[layer_costs.LayerCost]] = field(default_factory=dict)  # by candidate name
    deadline: Optional[float] = None  # time.monotonic() past which candidates are skipped, not measured

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def __call__(self, candidate: Candidate) -> Row:
        if candidate not in self.rows and self.out_of_time():
            why = f"{SKIPPED}: the time budget (--max-minutes) ran out"
            self.rows[candidate] = Row(candidate, 0, Accuracy(None, None, False, why), [])
        if candidate not in self.rows:
            try:
                row = self._measure(candidate)
            except Exception as e:  # onnxruntime's quantisers and sessions raise many types on graphs they cannot handle
                row = Row(candidate, 0, Accuracy(None, None, False, f"{FAILED}: {type(e).__name__}: {e}"), [])
            self.rows[candidate] = row
            self.progress(_progress_line(len(self.rows), row))
        return self.rows[candidate]

    def _measure(self, candidate: Candidate) -> Row:
        int8 = self.builder.build(candidate)
        twin = next((r for r in self.rows.values() if r.int8 == int8 and r.same_as is None), None)
        if twin is not None:  # e.g. Entropy ranges equal to MinMax's: measured once
            return Row(candidate, twin.bytes, twin.accuracy, twin.unfused, twin.timing, int8, twin.candidate.name, twin.convs)
        sess8 = runner.session(int8)
        unfused, convs = _inspect(int8)
        accuracy = self.judge(sess8, int8, candidate)
        timing = self.meter(sess8) if accuracy.within_budget else {}  # over budget it cannot win: not timed
        return Row(candidate, len(int8), accuracy, unfused, timing, int8, convs=convs)

    def judge(self, sess8, int8: bytes, candidate: Candidate) -> Accuracy:
        """The evaluator's judgement; never within budget when the artefact quantises no weight,
        which ptq_dynamic and ptq_static refuse to write (exit 4): a choice must be buildable."""
        accuracy = self.evaluator(sess8)
        encoding = candidate.encoding if candidate.encoding != "qdq" else "static"
        if quantize.coverage_of(int8, encoding).nothing_quantised:
            why = NOTHING_QUANTISED
            return Accuracy(accuracy.drop, accuracy.kept_gain, False, "; ".join(filter(None, [why, accuracy.reason])),
                            accuracy.shift_drop)
        return accuracy

    def rewritten(self, base: Row, name_sets: Sequence[Sequence[str]]) -> List[Row]:
        """The base candidate with each set of rewrites, all timed in one interleaved run with the
        base (fp32, base, rewritten, ...): a rewrite changes speed only, so they are compared side by
        side; the base's timing becomes that run's."""
        candidates = [c for c in (with_rewrites(base.candidate, n) for n in name_sets) if c not in self.rows]
        built = [self.builder.build(c) for c in candidates]
        sessions = [runner.session(b) for b in built]
        timings = self.meter.side_by_side([runner.session(base.int8), *sessions])
        base.timing = timings[0]
        for c, int8, sess8, timing in zip(candidates, built, sessions, timings[1:]):
            unfused, convs = _inspect(int8)
            self.rows[c] = Row(c, len(int8), self.judge(sess8, int8, c), unfused, timing, int8, convs=convs)
            self.progress(_progress_line(len(self.rows), self.rows[c]) + f"  (beside its base: x{base.speedup():.2f})")
        return [self.rows[with_rewrites(base.candidate, n)] for n in name_sets]

    def slow_layers(self, row: Row) -> List[layer_costs.LayerCost]:
        """The layers that the row's int8 runs slower than fp32, profiled at the largest timed batch;
        the cost table is kept for the report."""
        feeds = self.meter.inputs[max(self.meter.inputs)]
        named = self.builder.build(row.candidate, compact=False)
        costs = layer_costs.layer_costs(self.builder.model, named, feeds)
        self.layer_tables[row.candidate.name] = costs
        self.progress(f"per-layer cost of {row.candidate.name}:\n" + layer_costs.table(costs))
        return layer_costs.slow_layers(costs)


def _inspect(int8: bytes) -> Tuple[List[str], List[rewrites.ConvKernel]]:
    """(unfused compute ops, QLinearConvs and their fused-path misses), from one optimised graph."""
    optimised = rewrites.optimised(int8)
    return fusion.unfused_ops(optimised), rewrites.kernels(optimised)


NOTHING_QUANTISED = "quantises no weight (its recipe would be refused, exit 4)"
FAILED = "failed"  # building or running the candidate failed inside onnxruntime: dropped, with the reason
SKIPPED = "skipped"  # not measured: the time budget ran out first


def verdict(row: Row) -> str:
    """'within budget', 'quantises no weight', 'failed', 'skipped' or 'over budget': why a row is or is not a choice."""
    if row.accuracy.within_budget:
        return "within budget"
    if row.accuracy.reason.startswith((FAILED + ":", SKIPPED + ":")):
        return row.accuracy.reason.split(":", 1)[0]
    return "quantises no weight" if row.accuracy.reason.startswith(NOTHING_QUANTISED) else "over budget"


def _progress_line(i: int, row: Row) -> str:
    drop = "n/a" if row.accuracy.drop is None else f"{row.accuracy.drop:.2e}"
    if row.accuracy.shift_drop is not None:
        drop += f" shift {row.accuracy.shift_drop:.2e}"
    speed = "  ".join(f"b{b} x{t.speedup:.2f}" for b, t in sorted(row.timing.items()))
    twin = f"  (same bytes as {row.same_as})" if row.same_as else ""
    return f"[{i:3d}] {row.candidate.name:60s} drop {drop:20s} {speed}  unfused {len(row.unfused)}  {verdict(row)}{twin}"


def search(measure: Measure, groups: Sequence[FallbackGroup]) -> List[Row]:
    """Every base configuration, then fp32 groups: all subsets while len(groups) <=
    EXHAUSTIVE_GROUPS, else the groups ranked by their own accuracy gain and added greedily."""
    bases = base_candidates(measure.builder.model)
    for c in bases:
        measure(c)
    qdq = [c for c in bases if c.encoding == "qdq"]
    names = [g.name for g in groups]
    if len(names) <= EXHAUSTIVE_GROUPS:
        subsets = [s for k in range(1, len(names) + 1) for s in itertools.combinations(names, k)]
    else:
        subsets = [tuple(_rank(measure, qdq, names)[:k]) for k in range(1, len(names) + 1)]
    for base in qdq:
        for subset in subsets:
            measure(with_groups(base, subset))
    for row in rewrite_bases(measure.rows.values()):
        measure.rewritten(row, rewrite_sets(row))
    for row in _fix_bases(measure.rows.values()):
        measure(replace(row.candidate, overflow_fix="all"))
    keep_slow_layers_fp32(measure)
    return list(measure.rows.values())


SLOW_LAYER_BASES = 2  # the most accurate candidates within budget, profiled layer by layer ...
SLOW_LAYER_ROUNDS = 2  # ... with their slow layers kept fp32, profiled again, at most this many times


def keep_slow_layers_fp32(measure: Measure) -> None:
    """The most accurate static candidates within budget, each with exactly the layers its int8 makes
    slower kept fp32; then that candidate's own slow layers added, since moving quantisers to new
    boundaries moves cost too. Where nothing else beats fp32 this is the last try before fp32."""
    order = {n.name: i for i, n in enumerate(measure.builder.model.graph.node)}
    bases = [r for r in measure.rows.values() if r.accuracy.within_budget and r.candidate.encoding == "qdq"
             and r.same_as is None and not r.candidate.rewrites]
    for row in sorted(bases, key=lambda r: (_drop_key(r), r.bytes, r.candidate.name))[:SLOW_LAYER_BASES]:
        for _ in range(SLOW_LAYER_ROUNDS):
            if measure.out_of_time():
                return
            try:
                slow = measure.slow_layers(row)
            except Exception as e:  # onnxruntime's profiler on a graph it cannot run as built with names
                measure.progress(f"per-layer cost of {row.candidate.name} failed: {type(e).__name__}: {e}")
                break
            excluded = set(measure.builder.exclude(row.candidate))  # a layer already fp32 changes nothing
            slow = {c.head for c in slow if not set(c.nodes) <= excluded}
            layers = tuple(sorted(set(row.candidate.fp32_layers) | slow, key=order.get))
            if layers == row.candidate.fp32_layers:
                break
            row = measure(replace(row.candidate, fp32_layers=layers))
            if not row.accuracy.within_budget:
                break


FIX_BASES = 4  # the most accurate candidates within budget, tried again with 7-bit weights on every layer


def _fix_bases(rows: Iterable[Row]) -> List[Row]:
    """The overflow fix (tinyq.quant.overflow) as a dimension: "needed" (the default) and "all". Never
    "none": it saturates on AVX2 where a bound can be crossed, and equals "needed" where none can."""
    ok = [r for r in rows if r.accuracy.within_budget and r.candidate.encoding == "qdq" and r.same_as is None]
    return sorted(ok, key=lambda r: (_drop_key(r), r.bytes, r.candidate.name))[:FIX_BASES]


REWRITE_BASES_PER_GROUPS = 2  # the most accurate candidates within budget per set of fp32 groups ...
MAX_REWRITE_BASES = 8  # ... and at most this many in all


def rewrite_bases(rows: Iterable[Row]) -> List[Row]:
    """The candidates the rewrites are tried on: within budget, fully fused, some QLinearConv off
    the fused path; per set of fp32 groups the most accurate (rewrites change speed, not drops)."""
    ok = sorted((r for r in rows if r.accuracy.within_budget and r.candidate.encoding == "qdq" and not r.unfused
                 and r.conv_misses and r.same_as is None and not r.candidate.rewrites),
                key=lambda r: (_drop_key(r), r.bytes, r.candidate.name))
    per_groups: Dict[Tuple[str, ...], int] = {}
    chosen = []
    for r in ok:
        k = r.candidate.fp32_groups
        if per_groups.get(k, 0) < REWRITE_BASES_PER_GROUPS:
            per_groups[k] = per_groups.get(k, 0) + 1
            chosen.append(r)
    return chosen[:MAX_REWRITE_BASES]


def rewrite_sets(row: Row) -> List[Tuple[str, ...]]:
    """Each rewrite that fixes a condition the row's convolutions miss, alone, and all of them together."""
    useful = tuple(name for name in rewrites.REWRITES if any(name in k.fixed_by for k in row.convs))
    sets = [(name,) for name in useful]
    return sets + [useful] if len(useful) > 1 else sets


def _rank(measure: Measure, qdq: Sequence[Candidate], names: Sequence[str]) -> List[str]:
    """Groups by how much the drop falls when each alone goes back to fp32, on the most accurate
    base configuration (NNCF's ranker, on real validation data)."""
    best = min(qdq, key=lambda c: _drop_key(measure(c)))
    base = _drop_key(measure(best))
    gains = {n: base - _drop_key(measure(with_groups(best, (n,)))) for n in names}
    return sorted(names, key=lambda n: (-gains[n], n))


def _drop_key(row: Row) -> float:
    return np.inf if row.accuracy.drop is None else row.accuracy.drop


# --- the choice ------------------------------------------------------------------------------------


@dataclass
class Choice:
    row: Optional[Row]  # None: stays fp32
    purpose: str  # "speed", "size" or "fp32"
    margin: float
    reason: str


def noise_margin(timings: Iterable[Timing]) -> float:
    """The speed-up a candidate must exceed: MIN_MARGIN, or twice the fp32 runs' measured spread."""
    spreads = [t.fp32_spread for t in timings]
    return max(MIN_MARGIN, 2 * float(np.median(spreads))) if spreads else MIN_MARGIN


def choose(rows: Sequence[Row], no_speedup: Optional[str] = None) -> Optional[Choice]:
    """The fastest candidate within budget (the largest speed-up over fp32 at the largest batch) that
    runs fully fused and beats fp32 by more than the margin; among those within the margin of the
    fastest, the lowest drop, then the smallest file. Otherwise the weight-only artefact as
    size-only, unless it runs slower than fp32 beyond the margin: then fp32, and only
    no_speedup="size-only" ships it (no_speedup="fp32": always fp32). None: nothing is within budget."""
    margin = noise_margin(t for r in rows for t in r.timing.values())
    ok = [r for r in rows if r.accuracy.within_budget]
    if not ok:
        return None
    fast = [r for r in ok if r.candidate.encoding in ("qdq", "dynamic") and not r.unfused and r.speedup() > 1 + margin]
    if fast:
        # Speed-ups, not absolute times: each is paired with fp32 runs interleaved with its own, so
        # the machine's drift between candidates cancels out.
        best = max(r.speedup() for r in fast)
        tied = [r for r in fast if r.speedup() * (1 + margin) >= best]
        row = min(tied, key=lambda r: (_drop_key(r), r.bytes, len(r.candidate.fp32_groups), r.same_as is not None,
                                       -r.speedup(), r.candidate.name))
        return Choice(row, "speed", margin, f"fastest within budget: x{row.speedup():.2f} at batch {row.speed_batch}, "
                                            f"{len(tied)} within the {margin:.0%} margin, the lowest drop kept "
                                            f"({row.accuracy.drop:.2e}), then the smallest file")
    size = next((r for r in ok if r.candidate.encoding == "weight_only"), None)
    why = f"no candidate within budget beats fp32 by more than the {margin:.0%} margin while fully fused"
    if size is None or no_speedup == "fp32":
        return Choice(None, "fp32", margin, why + "; the model stays fp32")
    if no_speedup == "size-only":
        return Choice(size, "size", margin, why + "; weight-only ships as a size-only artefact (--no-speedup size-only)")
    if size.speedup() * (1 + margin) < 1:
        return Choice(None, "fp32", margin, why + f"; weight-only runs at x{size.speedup():.2f} of fp32, slower beyond the "
                                                  f"margin, so the model stays fp32 (--no-speedup size-only ships it for its size)")
    return Choice(size, "size", margin, why + "; weight-only ships as a size-only artefact, as fast as fp32 within the margin")
