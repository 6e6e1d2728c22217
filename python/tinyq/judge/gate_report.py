"""The gate's reports: a JSON row per model, a Markdown table with one row per judged output, and
the fp32-against-int8 scatter plot."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tinyq.judge.verdicts import ModelResult, SetResult


def _set_row(s: SetResult) -> Dict[str, object]:
    return {
        "input_set": s.input_set,
        "samples": s.samples,
        "budget": s.budget,
        "drop": s.drop,
        "judged": s.judged,
        "pass": s.passed,
        "outputs": [o.__dict__ for o in s.outputs],
        "saturation": s.saturation,
        "isa": {a: _isa_row(row) for a, row in s.isa.items()},
    }


def _isa_row(row) -> Dict[str, object]:
    """One arithmetic's verdict: drop, pass, how it was computed and on how many samples."""
    return {"drop": row.drop, "pass": row.passed, "how": row.how, "samples": row.samples,
            "kept_gain": row.kept_gain, "reason": row.reason}


def as_row(r: ModelResult) -> Dict[str, object]:
    """A JSON-ready report row."""
    return {
        "id": r.id,
        "fp32": r.fp32,
        "int8": r.int8,
        "budget": r.budget,
        "pass": r.passed,
        "judged": r.judged,
        "judged_on": r.judged_on,
        "synthetic_only": r.synthetic_only,
        "worst_drop": r.worst_drop,
        "sets": [_set_row(s) for s in r.sets],
        "task": r.task,
        "task_check": None if r.task_check is None else r.task_check.__dict__,
        "notes": r.notes,
        "latency_ms": r.latency_ms,
        "latency_error": r.latency_error,
        "scatter_png": r.scatter_png,
        "cpu": r.cpu,
        "overflow": r.overflow,
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


def saturation_text(s: SetResult) -> str:
    if not s.saturation:
        return ""
    name, share = max(s.saturation.items(), key=lambda kv: (kv[1], kv[0]))
    return f"{share:.2%} at {name}"


def _set_verdict(r: ModelResult, s: SetResult) -> str:
    if s.passed and s.budget is None:
        verdict = "finite; reported, not judged (stress check)"
    elif s.passed:
        verdict = "pass"
    elif s.budget is not None and not s.judged:
        verdict = "NOT JUDGED: no output could be judged"
    else:
        verdict = "FAIL"
    if s.input_set == r.judged_on and r.synthetic_only:
        verdict += " (synthetic data only)"
    return verdict


def isa_lines(r: ModelResult, prefix: str = "- ", named: bool = True) -> List[str]:
    """One line per (real set, arithmetic): the drop, the kept gain, the verdict and how it was
    computed; named: each line starts with the model's id."""
    name = f"{r.id}, " if named else ""
    lines = []
    for s in r.sets:
        for a, row in s.isa.items():
            drop = "n/a" if row.drop is None else f"{row.drop:.3e}"
            kept = "" if row.kept_gain is None else f", kept gain {row.kept_gain:.1%}"
            why = "" if row.passed or not row.reason else f": {row.reason}"
            lines.append(f"{prefix}{name}{s.input_set}, {a} arithmetic: drop {drop}{kept} "
                         f"({'pass' if row.passed else 'FAIL'}{why}); {row.how}")
    if r.overflow.get("integer_layers"):
        lines.append(f"{prefix}{r.id + ': ' if named else ''}{r.overflow['integer_layers']} integer layers, {r.overflow['can_saturate']} "
                     f"can saturate on AVX2 by the pair bound (tinyq.quant.overflow)")
    return lines


def markdown(results: Sequence[ModelResult]) -> str:
    """One row per (model, set, output); the set's drop is its worst judged output's."""
    lines = [
        "| model | input set | samples | budget | output | compared | drop | worst \\|Δ\\| | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    extra = []
    for r in results:
        for s in r.sets:
            budget = "finite only (stress)" if s.budget is None else f"{s.budget:g}"
            for o in s.outputs:
                drop = "n/a" if o.drop is None else f"{o.drop:.3e}"
                delta = "" if o.worst_abs_delta is None else f"{o.worst_abs_delta:.3g}"
                verdict = ("finite" if s.budget is None else "pass") if o.passed else "FAIL"
                lines.append(f"| {r.id} | {s.input_set} | {s.samples} | {budget} | {o.name} | {o.compared} | {drop} | "
                             f"{delta} | {verdict}: {o.reason} |")
            sat = saturation_text(s)
            drop = "n/a" if s.drop is None else f"{s.drop:.3e}"
            extra.append(f"- {r.id}, {s.input_set}: drop {drop} ({_set_verdict(r, s)})"
                         + (f"; most clipped activation {sat}" if sat else ""))
        extra.extend(isa_lines(r))
        task = _task_text(r)
        if task:
            check = "" if r.task_check is None else f": {r.task_check.reason}"
            extra.append(f"- {r.id}, task on {r.judged_on}: {task}{check}")
    return "\n".join(lines) + "\n\n" + "\n".join(extra) + "\n"


def scatter_png(path: Path, model_id: str, sets: Sequence[Tuple[str, np.ndarray, np.ndarray, Optional[float]]]) -> None:
    """fp32 against int8 values as the gate compared them (residuals for declared residual
    outputs), for each input set, with the identity line; at most 20 000 points a set, seed 0."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinyq.io.fileio import atomic_write_bytes

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


def plot_runs(path: Path, result: ModelResult, runs) -> None:
    """The scatter plot of every set whose compared values are finite; nothing when none is."""
    plotted = [(label, r.compared_fp32, r.compared_int8, r.result.drop) for label, r in runs.items()
               if r.compared_fp32.size and np.all(np.isfinite(r.compared_fp32)) and np.all(np.isfinite(r.compared_int8))]
    if plotted:
        scatter_png(path, result.id, plotted)
        result.scatter_png = str(path)
