"""Side by side on the restoration corpus: decoded frames, ffmpeg's filters, a learned filter's fp32
model and its int8 candidates, per codec and quality point.

Usage: tools/bazel run //python:compare_filters -- --id learned_filter_v2
           [--int8 LABEL=PATH ...] [--split soak] [--out-json R] [--out-png P] [--out-md M]

Every model runs on onnxruntime's CPU provider over the split's (decoded, source) luma pairs. The
table gives PSNR gain over the decoded frames, the share of the fp32 gain each int8 keeps, and
SSIM. The PNG shows one real crop of the split: decoded, the best ffmpeg filter, the fp32 model,
each int8 candidate and the source. The registry's int8 artefact is always included as
"registry int8". Exit codes: 0 written, 2 bad input.
"""

import io
import sys
from pathlib import Path

import numpy as np
from absl import flags

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_all, dumps_json
from tinyq.judge import gate
from tinyq.judge.metrics import filter_metrics, psnr
from tinyq.model import runner
from tinyq.registry import registry
from tinyq.search import latency
from tinyq.zoo import corpus, restoration, train, zoo

_ID = flags.DEFINE_string("id", "learned_filter_v2", "A registry filter model trained on the restoration corpus.")
_INT8 = flags.DEFINE_multi_string("int8", [], "LABEL=PATH of another int8 candidate to compare (repeatable).")
_SPLIT = flags.DEFINE_enum("split", "soak", ["val", "soak"], "Split (ffmpeg's filters cover val and soak).")
_RESTORATION = flags.DEFINE_string("restoration-corpus", None,
                                   "Restoration corpus .npz (default: model/corpus/restoration_corpus.npz in the workspace).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")
_OUT_JSON = flags.DEFINE_string("out-json", None, "Write the comparison as JSON with run_provenance here.")
_OUT_PNG = flags.DEFINE_string("out-png", None, "Write the crop comparison PNG here.")
_OUT_MD = flags.DEFINE_string("out-md", None, "Write the Markdown tables here.")
_LATENCY = flags.DEFINE_bool("latency", False, "Also time every int8 candidate against fp32 at batch 1 and 256 (one thread, "
                             "interleaved, medians of the thread's CPU time, as ptq_auto does).")


def _candidates(entry):
    out = [("fp32", entry.onnx)]
    if entry.int8_onnx is not None and entry.int8_onnx.is_file():
        out.append(("registry int8", entry.int8_onnx))
    for item in _INT8.value:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise cli.UsageError(f"--int8 {item!r}: expected LABEL=PATH, e.g. --int8 qat=/tmp/learned_filter_v2.qat.int8.onnx")
        p = cli.resolve_user_path(path)
        if not p.is_file():
            raise cli.UsageError(f"--int8 {item!r}: {p} not found")
        out.append((label, p))
    return out


def _outputs(data, split, candidates):
    """Everything on the windows' centres; the models run on the whole windows (real context)."""
    dist, ref = data.pairs(split)
    outs = {"decoded": restoration.centre(dist)}
    for name in restoration.FILTER_NAMES:
        outs[f"ffmpeg {name}"] = data.baseline(name, split)
    for label, path in candidates:
        outs[label] = restoration.centre(runner.run_all(gate.load_session(path, label, _ID.value), {"dist": dist})[0])
    return dist, outs["decoded"], restoration.centre(ref), outs


def _table(dist, ref, outs, labels):
    """Overall and per codec/quality rows: PSNR gain, kept share of the fp32 gain, SSIM."""
    groups = {"all": np.ones(len(dist), bool)}
    for key in sorted(set(labels), key=lambda k: (k.split(" q")[0], int(k.split(" q")[1]))):
        groups[key] = np.array([lab == key for lab in labels])
    rows = {}
    for name, out in outs.items():
        if name == "decoded":
            continue
        rows[name] = {g: filter_metrics(out[m], dist[m], ref[m], with_ssim=(g == "all")) for g, m in groups.items()}
    fp32 = rows["fp32"]["all"]["psnr_gain_db"]
    for r in rows.values():
        r["all"]["kept_of_fp32_gain"] = r["all"]["psnr_gain_db"] / fp32 if fp32 > 0 else None
    decoded = {g: float(psnr(dist[m], ref[m]).mean()) for g, m in groups.items()}
    return rows, decoded


def paired_differences(dist, ref, outs, labels, against):
    """{label: (mean, 2 standard errors)} of the per-patch PSNR gain difference, label minus `against`:
    a difference is measurable when its mean exceeds its two standard errors."""
    base = psnr(outs[against], ref)
    out = {}
    for label in labels:
        if label == against:
            continue
        d = psnr(outs[label], ref) - base
        out[label] = (float(d.mean()), float(2 * d.std(ddof=1) / np.sqrt(len(d))))
    return out


def _speedups(candidates, dist):
    """{label: {batch: fp32 time / int8 time}} for every int8 candidate, fp32 re-timed beside each."""
    meter = latency.LatencyMeter(runner.session(str(candidates[0][1]), threads=1), {"dist": dist}, {1: 30, 256: 7})
    out = {}
    for label, path in candidates[1:]:
        timing = meter(runner.session(str(path), threads=1))
        out[label] = {str(b): round(t.speedup, 3) for b, t in timing.items()}
        print(f"compare_filters: {label}: " + ", ".join(f"x{t.speedup:.2f} at batch {b}" for b, t in timing.items()), flush=True)
    return out


def _markdown(rows, decoded, n, speed):
    best = max((k for k in rows if k.startswith("ffmpeg")), key=lambda k: rows[k]["all"]["psnr_gain_db"])
    lines = [f"{n} patches; decoded PSNR {decoded['all']:.3f} dB.", "",
             "| filter | PSNR gain (dB) | over best ffmpeg (dB) | kept of fp32 gain | SSIM in → out | speed b1 | speed b256 |",
             "|---|---|---|---|---|---|---|"]
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["all"]["psnr_gain_db"]):
        a = r["all"]
        kept = f"{a['kept_of_fp32_gain'] * 100:.1f} %" if a["kept_of_fp32_gain"] is not None and not name.startswith("ffmpeg") else ""
        sp = speed.get(name, {})
        lines.append(f"| {name} | {a['psnr_gain_db']:+.3f} | {a['psnr_gain_db'] - rows[best]['all']['psnr_gain_db']:+.3f} | {kept} "
                     f"| {a['ssim_in']:.4f} → {a['ssim_out']:.4f} | {_x(sp.get('1'))} | {_x(sp.get('256'))} |")
    learned = [k for k in rows if not k.startswith("ffmpeg")]
    groups = [g for g in decoded if g != "all"]
    lines += ["", f"PSNR gain (dB) per codec and quality point (best ffmpeg filter overall: {best}):", "",
              "| codec | decoded (dB) | " + " | ".join([best] + learned) + " |", "|---|---|" + "---|" * (1 + len(learned))]
    for g in groups:
        cells = [f"{rows[k][g]['psnr_gain_db']:+.3f}" for k in [best] + learned]
        lines.append(f"| {g} | {decoded[g]:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", best


def _x(speedup):
    return f"x{speedup:.2f}" if speedup is not None else ""


def _crop_png(outs, ref, order, index):
    """One patch per panel, upscaled 4x with nearest neighbour, titled with its PSNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, outs[name][index]) for name in order] + [("source", ref[index])]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.0 * len(panels), 2.4), dpi=100)
    for ax, (name, img) in zip(axes, panels):
        ax.imshow(np.clip(img[0], 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        title = name if name == "source" else f"{name}\n{psnr(img[None], ref[index][None])[0]:.2f} dB"
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _pick_crop(dist, ref, fp32):
    """The patch where the fp32 filter gains most among the middle third of decoded quality."""
    before = psnr(dist, ref)
    lo, hi = np.quantile(before, [1 / 3, 2 / 3])
    gain = np.where((before >= lo) & (before <= hi), psnr(fp32, ref) - before, -np.inf)
    return int(np.argmax(gain))


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    cli.guard_flags({"--out-json": _OUT_JSON.value, "--out-png": _OUT_PNG.value, "--out-md": _OUT_MD.value}, [], reg_path)
    reg = cli.load_valid_registry(reg_path)
    try:
        entry, spec = reg.get(_ID.value), zoo.spec(_ID.value)
    except KeyError as e:
        raise cli.UsageError(f"--id: {e.args[0]}") from None
    if spec.data != "restoration":
        raise cli.UsageError(f"--id {_ID.value}: not trained on the restoration corpus; try --id learned_filter_v2")
    rpath = cli.path_or_default(_RESTORATION.value, restoration.DEFAULT_PATH)
    try:
        data = train.Corpora(restoration_path=rpath).get("restoration")
    except FileNotFoundError as e:
        raise cli.UsageError(str(e)) from None
    candidates = _candidates(entry)
    windows, dist, ref, outs = _outputs(data, _SPLIT.value, candidates)
    rows, decoded = _table(dist, ref, outs, data.labels(_SPLIT.value))
    speed = _speedups(candidates, windows) if _LATENCY.value else {}
    md, best = _markdown(rows, decoded, len(dist), speed)
    int8_labels = [label for label, _ in candidates[1:]]
    paired = paired_differences(dist, ref, outs, int8_labels, int8_labels[0]) if int8_labels else {}
    if paired:
        md += "\nPaired per-patch PSNR difference against " + int8_labels[0] + " (mean ± 2 standard errors):\n\n"
        md += "".join(f"- {label}: {m:+.4f} ± {e:.4f} dB{' (measurable)' if abs(m) > e else ''}\n" for label, (m, e) in paired.items())
    print(md, end="")

    index = _pick_crop(dist, ref, outs["fp32"])
    order = ["decoded", best] + [label for label, _ in candidates]
    files = {}
    if _OUT_PNG.value:
        files[cli.resolve_user_path(_OUT_PNG.value)] = _crop_png(outs, ref, order, index)
    if _OUT_MD.value:
        files[cli.resolve_user_path(_OUT_MD.value)] = md.encode()
    if _OUT_JSON.value:
        report = {"schema": "tinyq-compare-filters-report-v1", "id": _ID.value, "split": _SPLIT.value, "n": len(dist),
                  "decoded_psnr_db": decoded, "rows": rows, "best_ffmpeg": best, "speedup": speed,
                  "paired_vs_first_int8": {k: {"mean_db": m, "two_se_db": e} for k, (m, e) in paired.items()},
                  "baseline_settings": data.meta["baseline_settings"], "crop": {"index": index, "panels": order + ["source"]},
                  "run_provenance": provenance.absl_provenance(
                      tool="compare_filters", main_module=sys.modules[__name__],
                      inputs=[(rpath, "corpus"), (reg_path, "registry")] + [(p, label) for label, p in candidates])}
        files[cli.resolve_user_path(_OUT_JSON.value)] = dumps_json(report).encode()
    atomic_write_all(list(files.items()))
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
