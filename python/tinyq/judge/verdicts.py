"""The gate's verdicts: per output (tinyq.judge.drops), per set, per int8 arithmetic and per
model, and the budgets they are judged against. Plain data, shared by the gate and its report."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

from tinyq.judge import drops

DEFAULT_TASK_BUDGET = 0.10  # a filter's int8 may lose at most this share of the fp32's PSNR gain
SHIFT_BUDGET_FACTOR = 10.0  # the shift set's budget, unless quant_shift_budget_plcc says otherwise


class GateError(Exception):
    """Cannot judge the model (missing file, bad shapes, a session that fails): exit 2."""


@dataclass
class SetResult:
    input_set: str  # "soak", "data", "shift", "validation" or "synthetic"
    samples: int
    outputs: List[drops.OutputResult]
    budget: Optional[float] = None  # None: only finiteness is judged (the stress check)
    saturation: Dict[str, float] = field(default_factory=dict)  # activation -> share clipped at its calibrated range
    isa: Dict[str, "ArithmeticRow"] = field(default_factory=dict)  # arithmetic -> its verdict on this set

    @property
    def drop(self) -> Optional[float]:
        return drops.worst(self.outputs)

    @property
    def judged(self) -> bool:
        return drops.any_judged(self.outputs)

    @property
    def passed(self) -> bool:
        return self.native_passed and all(r.passed for r in self.isa.values())

    @property
    def native_passed(self) -> bool:
        """The verdict on this CPU's own int8 arithmetic, over every sample."""
        return all(o.passed for o in self.outputs) and (self.budget is None or self.judged)


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
class ArithmeticRow:
    """One int8 arithmetic's verdict on one set: its drop, and how this machine computed it."""

    arithmetic: str
    how: str
    samples: int
    drop: Optional[float]
    passed: bool
    kept_gain: Optional[float] = None  # a filter's kept share of the fp32's PSNR gain, on the same samples
    reason: str = ""


@dataclass
class ModelResult:
    id: str
    fp32: str
    int8: str
    budget: float
    sets: List[SetResult]
    judged_on: str = "synthetic"  # the set the budget was judged on: "soak", "data", "validation" or "synthetic"
    task: Dict[str, Dict[str, float]] = field(default_factory=dict)  # {"fp32": {...}, "int8": {...}}
    task_check: Optional[TaskCheck] = None
    notes: List[str] = field(default_factory=list)
    latency_ms: Dict[str, Dict[str, float]] = field(default_factory=dict)
    latency_error: Optional[str] = None
    scatter_png: Optional[str] = None
    cpu: Dict[str, str] = field(default_factory=dict)  # tinyq.judge.arithmetic.Cpu.as_dict() of the judging machine
    overflow: Dict[str, object] = field(default_factory=dict)  # tinyq.quant.overflow.summary() of the int8 model

    def set(self, name: str) -> Optional[SetResult]:
        return next((s for s in self.sets if s.input_set == name), None)

    @property
    def judged(self) -> bool:
        """Whether any output was judged on the set the budget is judged on."""
        s = self.set(self.judged_on)
        return s is not None and s.judged

    @property
    def passed(self) -> bool:
        return self.judged and all(s.passed for s in self.sets) and (self.task_check is None or self.task_check.passed)

    @property
    def worst_drop(self) -> Optional[float]:
        """The drop on the set the budget was judged on: its worst judged output's."""
        s = self.set(self.judged_on)
        return None if s is None else s.drop

    @property
    def synthetic_only(self) -> bool:
        return self.judged_on == "synthetic"


@dataclass(frozen=True)
class Budgets:
    """What the registry (or the flags) allow: the drop on real data, on the shift set (default
    SHIFT_BUDGET_FACTOR x plcc), optionally on the synthetic set, and the share of a filter's PSNR
    gain the int8 may lose."""

    plcc: float
    synthetic: Optional[float] = None
    task: float = DEFAULT_TASK_BUDGET
    shift: Optional[float] = None

    @property
    def shift_budget(self) -> float:
        return self.shift if self.shift is not None else SHIFT_BUDGET_FACTOR * self.plcc

    @classmethod
    def of_entry(cls, entry) -> "Budgets":
        """A registry entry's budgets: quant_accuracy_budget_plcc, quant_synthetic_budget_plcc,
        quant_task_budget, quant_shift_budget_plcc."""
        raw = entry.raw
        return cls(entry.budget_plcc, raw.get("quant_synthetic_budget_plcc"),
                   float(raw.get("quant_task_budget", DEFAULT_TASK_BUDGET)), raw.get("quant_shift_budget_plcc"))

    def overridden(self, plcc: Optional[float] = None, synthetic: Optional[float] = None,
                   task: Optional[float] = None, shift: Optional[float] = None) -> "Budgets":
        """These budgets with every value given (from a flag) replacing its own."""
        given = {k: v for k, v in (("plcc", plcc), ("synthetic", synthetic), ("task", task), ("shift", shift))
                 if v is not None}
        return replace(self, **given)
