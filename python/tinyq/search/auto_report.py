"""What ptq_auto writes: the chosen recipe, the candidate table, and the drop-against-latency plot."""

from __future__ import annotations

import hashlib
import io
from typing import Dict, Optional, Sequence

import numpy as np

from tinyq.search import auto
from tinyq.search.auto import Candidate, Choice, CandidateBuilder, Row


def encoding_name(c: Candidate) -> str:
    """The exact encoding, as the registry's quant_encoding names it."""
    granularity = "per_channel" if c.per_channel else "per_tensor"
    if c.encoding in ("weight_only", "dynamic"):
        return f"{c.encoding}_s8_{granularity}"
    augment = "_augmented" if c.augment else ""
    groups = ("_fp32_groups" if c.fp32_groups else "") + ("_fp32_layers" if c.fp32_layers else "")
    fix = "_7bit_all" if c.overflow_fix == "all" else ""
    return f"qdq_u8s8_{granularity}_{c.method}{augment}{groups}" + "".join(f"_{REWRITE_TAGS[r]}" for r in c.rewrites) + fix


# How quant_encoding names each rewrite (tinyq.quant.rewrites.REWRITES).
REWRITE_TAGS = {"pad_conv_inputs": "padin", "pad_conv_outputs": "padout"}


def recipe(choice: Choice, builder: CandidateBuilder) -> Dict[str, object]:
    """The decision as model/zoo.bzl records it: the quantiser's mode and flags, and what the
    artefact is for. //model:<id>_int8 rebuilds the artefact from it, byte for byte."""
    if choice.row is None:
        return {"mode": "fp32", "purpose": "fp32"}
    c = choice.row.candidate
    if c.encoding in ("weight_only", "dynamic"):
        args = [f"--encoding={c.encoding}"] + (["--per-channel"] if c.per_channel else [])
        mode = "dynamic"
    else:
        args = [f"--calibrate-method={c.method}", "--per-channel" if c.per_channel else "--noper-channel"]
        if c.augment:
            args.append("--calibration-augment")
        if (c.method, c.augment) in builder.capped:
            args.append(f"--calibration-samples={builder.histogram_samples}")  # --max-memory's subset
        exclude = builder.exclude(c)
        if exclude:
            args.append("--fp32-nodes=" + ",".join(exclude))
        if c.rewrites:
            args.append("--rewrite=" + ",".join(c.rewrites))
        if c.overflow_fix != "needed":
            args.append(f"--overflow-fix={c.overflow_fix}")
        mode = "static"
    return {"mode": mode, "args": args, "encoding": encoding_name(c), "purpose": choice.purpose,
            "fp32_groups": list(c.fp32_groups), "fp32_layers": list(c.fp32_layers), "rewrites": list(c.rewrites), "conv_misses": choice.row.conv_misses}


def zoo_entry(model_id: str, rec: Dict[str, object]) -> str:
    """The recipe as a line of model/zoo.bzl's ZOO_INT8."""
    if rec["mode"] == "fp32":
        return f"# {model_id}: stays fp32 (remove it from ZOO_INT8 and set quant_mode fp32)"
    keys = ("mode", "args", "encoding", "purpose") + (("conv_misses",) if rec.get("conv_misses") else ())
    fields = ", ".join(f'"{k}": {_starlark(rec[k])}' for k in keys)
    return f'"{model_id}": {{{fields}}},'


def _starlark(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_starlark(v) for v in value) + "]"
    return f'"{value}"'


def row_dict(r: Row, builder: CandidateBuilder) -> Dict[str, object]:
    c = r.candidate
    return {
        "candidate": c.name,
        "encoding": c.encoding,
        "calibration": c.method,
        "per_channel": c.per_channel,
        "fp32_groups": list(c.fp32_groups),
        "fp32_layers": list(c.fp32_layers),
        "fp32_nodes": builder.exclude(c),
        "int8_bytes": r.bytes,
        "int8_sha256": hashlib.sha256(r.int8).hexdigest() if r.int8 else None,
        "calibration_augment": c.augment,
        "rewrites": list(c.rewrites),
        "conv_kernels": [k.as_dict() for k in r.convs],
        "validation_drop": r.accuracy.drop,
        "shift_drop": r.accuracy.shift_drop,
        "kept_gain": r.accuracy.kept_gain,
        "within_budget": r.accuracy.within_budget,
        "why_over_budget": r.accuracy.reason or None,
        "unfused_ops": r.unfused,
        "latency_ms": {str(b): {"fp32": t.fp32_ms, "int8": t.int8_ms, "speedup": t.speedup} for b, t in sorted(r.timing.items())},
        "same_bytes_as": r.same_as,
    }


def table(rows: Sequence[Row], choice: Optional[Choice]) -> str:
    batches = sorted({b for r in rows for b in r.timing})
    head = "| candidate | bytes | validation drop | shift drop | unfused | " + " | ".join(f"×fp32 b{b}" for b in batches) + " | |"
    lines = [head, "|" + "---|" * (6 + len(batches))]
    chosen = choice.row.candidate if choice and choice.row else None
    for r in rows:
        drop = "n/a" if r.accuracy.drop is None else f"{r.accuracy.drop:.2e}"
        if r.accuracy.kept_gain is not None:
            drop += f" (keeps {r.accuracy.kept_gain:.0%})"
        speed = " | ".join(f"{r.timing[b].speedup:.2f}" if b in r.timing else "" for b in batches)
        mark = "**chosen**" if r.candidate == chosen else ("" if r.accuracy.within_budget else auto.verdict(r))
        shift = "n/a" if r.accuracy.shift_drop is None else f"{r.accuracy.shift_drop:.2e}"
        lines.append(f"| {r.candidate.name} | {r.bytes} | {drop} | {shift} | {len(r.unfused)} | {speed} | {mark} |")
    return "\n".join(lines) + "\n"


def plot_png(model_id: str, rows: Sequence[Row], choice: Optional[Choice], budget: float) -> bytes:
    """Validation drop against int8 latency at the largest batch, the budget line, fp32's latency
    and the chosen point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.timing]  # a candidate over budget or failed is not timed: no point
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=100)
    b = max(rows[0].timing) if rows else 1
    floor = budget * 1e-4
    for ok, colour, label in ((True, "tab:blue", "within budget"), (False, "tab:red", "over budget")):
        pts = [(r.timing[b].int8_ms, max(r.accuracy.drop or floor, floor)) for r in rows if r.accuracy.within_budget == ok]
        if pts:
            ax.scatter(*zip(*pts), s=18, color=colour, label=label)
    ax.axhline(budget, color="black", linewidth=0.8, linestyle="--", label=f"budget {budget:g}")
    if rows:
        fp32_ms = float(np.median([r.timing[b].fp32_ms for r in rows]))
        ax.axvline(fp32_ms, color="grey", linewidth=0.8, linestyle=":", label=f"fp32 {fp32_ms:.3g} ms")
    if choice and choice.row:
        r = choice.row
        ax.scatter([r.timing[b].int8_ms], [max(r.accuracy.drop or floor, floor)], s=160, facecolors="none",
                   edgecolors="green", linewidths=2, label=f"chosen ({choice.purpose})")
    ax.set_yscale("log")
    ax.set_xlabel(f"int8 latency at batch {b} (ms, one thread)")
    ax.set_ylabel("drop on the validation set (1 - Pearson r)")
    ax.set_title(f"{model_id}: ptq_auto candidates", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
