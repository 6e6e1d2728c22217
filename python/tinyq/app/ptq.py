"""What ptq_dynamic and ptq_static share: where they may write, and writing artefact and report.

Both tools check every path before any work (cli.guard_outputs: no missing directory, no output
that is an input or a registry's fp32 model; exit 2), refuse an artefact that quantised no weight
(exit 4, nothing written), and write the artefact and its report both or neither.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_all
from tinyq.model import weights
from tinyq.quant import quantize

EXIT_LARGER = quantize.EXIT_LARGER
EXIT_NOTHING_QUANTISED = quantize.EXIT_NOTHING_QUANTISED


@dataclass(frozen=True)
class Paths:
    src: Path
    out: Path
    report: Optional[Path]


def paths(argv: List[str], output: Optional[str], report: Optional[str]) -> Paths:
    """The fp32 source, the artefact and the report, resolved against the caller's directory."""
    if len(argv) != 2:
        raise cli.UsageError("expected exactly one fp32 model path")
    src = cli.resolve_user_path(argv[1])
    out = cli.resolve_user_path(output) if output else quantize.default_output(src)
    return Paths(src, out, cli.resolve_user_path(report) if report else None)


def guard(p: Paths, inputs: Sequence[Path] = (), registry_path: Optional[Path] = None) -> None:
    """cli.guard_outputs for a PTQ tool: exit 2 or 9 before any work when a path is unusable."""
    cli.guard_outputs({"--output": p.out, "--report-out": p.report}, [p.src, *inputs], registry_path)


OVERFLOW_FIX_HELP = ("Which integer layers are re-encoded so that no pair of products can saturate on AVX2 "
                     "(tinyq.quant.overflow): needed (those whose pair bound can be crossed, at the narrowest safe "
                     "scale), all (7-bit weights everywhere), or none.")


def overflow_report(tool: str, artefact: bytes, scope: str) -> Dict[str, Any]:
    """The artefact's pair bounds (tinyq.quant.overflow) for the report, with a line saying whether any
    layer can still saturate on AVX2."""
    import onnx

    from tinyq.quant import overflow

    bounds = overflow.pair_bounds(onnx.load_from_string(artefact))
    summary = dict(overflow.summary(bounds), fix=scope)
    risky = [b.node for b in bounds if b.can_saturate]
    if bounds:
        print(f"{tool}: {len(bounds)} integer layers (--overflow-fix={scope}); "
              + (f"{len(risky)} can saturate on AVX2: {', '.join(risky)}" if risky else "none can saturate on AVX2"))
    return summary


def _coverage_lines(tool: str, cov: weights.Coverage) -> List[str]:
    lines = [f"{tool}: weights quantised: {cov.fraction:.1%} ({cov.quantised_elements} of "
             f"{cov.quantised_elements + cov.fp32_elements} elements)"]
    for o in cov.left_fp32:
        lines.append(f"{tool}: left in fp32: {o.op} x{o.count} ({o.elements} elements): {o.reason}")
    return lines


def finish(
    tool: str,
    p: Paths,
    artefact: bytes,
    cov: weights.Coverage,
    what: str,
    report: Dict[str, Any],
    inputs: Sequence[provenance.Artefact],
    larger_hint: str,
) -> int:
    """Writes the artefact and its report (both or neither) and says what was quantised.

    Returns the tool's exit code: 0, EXIT_LARGER (written, flagged), or EXIT_NOTHING_QUANTISED
    (refused, nothing written).
    """
    if cov.nothing_quantised:
        print(f"{tool}: error: {p.src}: the {what} artefact quantises no weight; nothing was written.", file=sys.stderr)
        for line in _coverage_lines(tool, cov)[1:]:
            print(line, file=sys.stderr)
        print(f"{tool}: an int8 model must quantise at least one weight: try another encoding, or keep the model fp32.",
              file=sys.stderr)
        return EXIT_NOTHING_QUANTISED
    sizes = quantize.size_fields(p.src, len(artefact))
    files = [(p.out, artefact)]
    if p.report:
        main = sys.modules["__main__"]
        full = {**report, "output": str(p.out), **sizes, "weights": cov.as_dict(), "run_provenance": provenance.absl_provenance(
            tool=tool, main_module=main, inputs=inputs, outputs=[(p.out, "int8_model", artefact)])}
        files.append((p.report, provenance.report_bytes(full)))
    atomic_write_all(files)
    print(f"{tool}: wrote {p.out} ({what}, {sizes['fp32_bytes']} -> {sizes['int8_bytes']} B, x{sizes['size_ratio']:.2f})"
          + (f" and {p.report}" if p.report else ""))
    print("\n".join(_coverage_lines(tool, cov)))
    if not sizes["larger_than_fp32"]:
        return cli.EXIT_OK
    print(f"WARNING: {p.out} ({sizes['int8_bytes']} B) is NOT SMALLER than its fp32 source {p.src} ({sizes['fp32_bytes']} B); "
          f"tinyq will not register it. {larger_hint}", file=sys.stderr)
    return EXIT_LARGER
