"""Task accuracy of every shipped zoo model on a corpus split, from the committed .onnx files.

Usage: tools/bazel run //python:evaluate_zoo -- [--split soak] [--out-json R]

Prints two Markdown tables. The models: PLCC, SROCC and RMSE against libvmaf's VMAF for the
metrics, PSNR and SSIM gains for the filters, and the no-reference baseline (a linear fit on luma
variance). The restoration baselines: ffmpeg's post-processing filters (spp, uspp, pp7, fspp,
deblock) at the settings chosen on the val split, on the same frames as the restoration corpus's
filters, beside every filter model trained on that corpus. The model cards quote these numbers.
"""

import sys

from absl import flags

from tinyq.app import cli, provenance
from tinyq.judge.metrics import filter_metrics
from tinyq.registry import registry
from tinyq.zoo import corpus, restoration, train, zoo

_SPLIT = flags.DEFINE_enum("split", "soak", list(corpus.SPLIT_NAMES), "Corpus split to evaluate on.")
_CORPUS = flags.DEFINE_string("corpus", None, "Video-quality corpus .npz (default: model/corpus/vq_corpus.npz in the workspace).")
_RESTORATION = flags.DEFINE_string("restoration-corpus", None,
                                   "Restoration corpus .npz (default: model/corpus/restoration_corpus.npz in the workspace).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")
_OUT_JSON = flags.DEFINE_string("out-json", None, "Write the tables as JSON with run_provenance here.")


def evaluate(reg: registry.Registry, corpora: train.Corpora, split: str):
    rows = []
    for entry in reg.models:
        spec = zoo.spec(entry.id)
        ds = train.dataset(spec, corpora.for_spec(spec), split)
        pred = train.predict_onnx(entry.onnx, ds.inputs, [i.name for i in spec.inputs])
        rows.append({"id": entry.id, "kind": entry.kind, "data": spec.data, "n": len(ds),
                     **train.task_metrics(spec, pred, ds, with_ssim=True)})
    return rows


def restoration_baselines(data: restoration.RestorationCorpus, split: str):
    """Each ffmpeg filter at its val-chosen setting on the split's (decoded, source) pairs."""
    if split == "train":
        return []
    dist, ref = (restoration.centre(a) for a in data.pairs(split))
    settings = data.meta["baseline_settings"]
    return [{"filter": name, "setting": settings[name], "n": len(dist),
             **filter_metrics(data.baseline(name, split), dist, ref, with_ssim=True)}
            for name in restoration.FILTER_NAMES]


def _print_models(rows, split):
    print(f"| model | kind | {split} samples | PLCC | SROCC | RMSE | PSNR in → out (dB) | PSNR gain (dB) | SSIM in → out |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["kind"] == "filter":
            print(f"| {r['id']} | {r['kind']} ({r['data']} corpus) | {r['n']} | | | | {r['psnr_in_db']:.3f} → {r['psnr_out_db']:.3f} "
                  f"| {r['psnr_gain_db']:+.3f} | {r['ssim_in']:.4f} → {r['ssim_out']:.4f} |")
        else:
            print(f"| {r['id']} | {r['kind']} | {r['n']} | {r['plcc']:.5f} | {r['srocc']:.5f} | {r['rmse']:.3f} | | | |")


# What a learned restoration filter must reach on the soak split (issue 15).
TARGET_OVER_DECODED_DB = 0.8
TARGET_OVER_BEST_FFMPEG_DB = 0.3


def target_lines(rows, baselines):
    """Per learned restoration filter, each target met or its measured shortfall."""
    best = max(baselines, key=lambda b: b["psnr_gain_db"])
    out = []
    for r in (r for r in rows if r["data"] == "restoration"):
        for what, got, want in (("over the decoded frames", r["psnr_gain_db"], TARGET_OVER_DECODED_DB),
                                (f"over the best ffmpeg filter ({best['filter']})", r["psnr_gain_db"] - best["psnr_gain_db"],
                                 TARGET_OVER_BEST_FFMPEG_DB)):
            verdict = "met" if got >= want else f"SHORT by {want - got:.3f} dB"
            out.append(f"{r['id']}: {got:+.3f} dB {what}; target >= +{want} dB: {verdict}")
    return out


def _print_restoration(rows, baselines, targets, split):
    learned = [r for r in rows if r["data"] == "restoration"]
    if not baselines:
        return
    best = max(baselines, key=lambda b: b["psnr_gain_db"])
    print(f"\nRestoration corpus, {split} split ({baselines[0]['n']} patches, decoded {baselines[0]['psnr_in_db']:.3f} dB, "
          f"SSIM {baselines[0]['ssim_in']:.4f}):\n")
    print("| filter | setting (chosen on val) | PSNR gain (dB) | over best ffmpeg (dB) | SSIM gain |")
    print("|---|---|---|---|---|")
    for b in sorted(baselines, key=lambda b: -b["psnr_gain_db"]):
        print(f"| ffmpeg {b['filter']} | `{b['setting']}` | {b['psnr_gain_db']:+.3f} | {b['psnr_gain_db'] - best['psnr_gain_db']:+.3f} "
              f"| {b['ssim_gain']:+.4f} |")
    for r in learned:
        print(f"| {r['id']} | learned | {r['psnr_gain_db']:+.3f} | {r['psnr_gain_db'] - best['psnr_gain_db']:+.3f} "
              f"| {r['ssim_out'] - r['ssim_in']:+.4f} |")
    print()
    for line in targets:
        print(line)


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    corpora = train.Corpora(cli.path_or_default(_CORPUS.value, corpus.DEFAULT_PATH),
                            cli.path_or_default(_RESTORATION.value, restoration.DEFAULT_PATH))
    reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    reg = cli.load_valid_registry(reg_path)
    try:
        rows = evaluate(reg, corpora, _SPLIT.value)
        vq, rdata = corpora.get("vq"), corpora.get("restoration")
    except FileNotFoundError as e:
        raise cli.UsageError(str(e)) from None
    baseline = train.luma_variance_baseline(vq, _SPLIT.value)
    baselines = restoration_baselines(rdata, _SPLIT.value)

    _print_models(rows, _SPLIT.value)
    print(f"| baseline: luma variance (nr) | nr | | {baseline['plcc']:.5f} | {baseline['srocc']:.5f} | {baseline['rmse']:.3f} | | | |")
    targets = target_lines(rows, baselines) if baselines else []
    _print_restoration(rows, baselines, targets, _SPLIT.value)
    if _OUT_JSON.value:
        report = {
            "schema": "tinyq-evaluate-zoo-report-v2",
            "split": _SPLIT.value,
            "models": rows,
            "baseline_luma_variance": baseline,
            "restoration_baselines": baselines,
            "restoration_targets": targets,
            "run_provenance": provenance.absl_provenance(
                tool="evaluate_zoo", main_module=sys.modules[__name__],
                inputs=[(p, "corpus") for p in corpora.paths.values()] + [(reg_path, "registry")]
                + [(m.onnx, "fp32_model") for m in reg.models],
            ),
        }
        provenance.write_report(cli.resolve_user_path(_OUT_JSON.value), report)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
