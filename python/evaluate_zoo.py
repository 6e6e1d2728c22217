"""Task accuracy of every shipped zoo model on a corpus split, from the committed .onnx files.

Usage: tools/bazel run //python:evaluate_zoo -- [--split soak] [--out-json R]

Prints a Markdown table: PLCC, SROCC and RMSE against libvmaf's VMAF for the metrics, PSNR gain
for the filter, and the no-reference baseline (a linear fit on luma variance). The model cards
in docs/models/ quote these numbers.
"""

import sys

from absl import flags

from tinyq import cli, corpus, provenance, registry, train, zoo

_SPLIT = flags.DEFINE_enum("split", "soak", list(corpus.SPLIT_NAMES), "Corpus split to evaluate on.")
_CORPUS = flags.DEFINE_string("corpus", None, "Corpus .npz (default: model/corpus/vq_corpus.npz in the workspace).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")
_OUT_JSON = flags.DEFINE_string("out-json", None, "Write the table as JSON with run_provenance here.")


def evaluate(reg: registry.Registry, data: corpus.Corpus, split: str):
    rows = []
    for entry in reg.models:
        spec = zoo.spec(entry.id)
        ds = train.dataset(spec, data, split)
        pred = train.predict_onnx(entry.onnx, ds.inputs, [i.name for i in spec.inputs])
        rows.append({"id": entry.id, "kind": entry.kind, "n": len(ds), **train.task_metrics(spec, pred, ds)})
    return rows


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    corpus_path = cli.path_or_default(_CORPUS.value, corpus.DEFAULT_PATH)
    reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    reg = cli.load_valid_registry(reg_path)
    data = corpus.load(corpus_path)
    rows = evaluate(reg, data, _SPLIT.value)
    baseline = train.luma_variance_baseline(data, _SPLIT.value)

    print(f"| model | kind | {_SPLIT.value} samples | PLCC | SROCC | RMSE | PSNR in → out (dB) | PSNR gain (dB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["kind"] == "filter":
            print(f"| {r['id']} | {r['kind']} | {r['n']} | | | | {r['psnr_in_db']:.3f} → {r['psnr_out_db']:.3f} | {r['psnr_gain_db']:+.3f} |")
        else:
            print(f"| {r['id']} | {r['kind']} | {r['n']} | {r['plcc']:.5f} | {r['srocc']:.5f} | {r['rmse']:.3f} | | |")
    print(f"| baseline: luma variance (nr) | nr | | {baseline['plcc']:.5f} | {baseline['srocc']:.5f} | {baseline['rmse']:.3f} | | |")
    if _OUT_JSON.value:
        report = {
            "schema": "tinyq-evaluate-zoo-report-v1",
            "split": _SPLIT.value,
            "models": rows,
            "baseline_luma_variance": baseline,
            "run_provenance": provenance.absl_provenance(
                tool="evaluate_zoo", main_module=sys.modules[__name__],
                inputs=[(corpus_path, "corpus"), (reg_path, "registry")] + [(m.onnx, "fp32_model") for m in reg.models],
            ),
        }
        provenance.write_report(cli.resolve_user_path(_OUT_JSON.value), report)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
