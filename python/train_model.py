"""Trains one zoo model on the corpus and ships it: .onnx, sidecar JSON and registry entry.

Usage: tools/bazel run //python:train_<id>            (one target per model)
       tools/bazel run //python:train_model -- --model ID [--epochs N] [--seed S] [--out-dir D]

Seeded and deterministic on a given machine. Picks the epoch with the best validation metric,
then reports the exported ONNX model's task accuracy on the soak split (via onnxruntime).
"""

import sys

import numpy as np
from absl import flags

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_bytes, atomic_write_json, sha256_file
from tinyq.registry import registry, registry_files, sidecar
from tinyq.zoo import corpus, restoration, train, zoo

_MODEL = flags.DEFINE_enum("model", None, list(zoo.SPECS), "The zoo model to train.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs (default: the model's own).", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed for initialisation and shuffling.")
_MAX_TRAIN = flags.DEFINE_integer("max-train", None, "Use a seeded subset of this many train rows (quick runs).")
_CORPUS = flags.DEFINE_string("corpus", None, "Video-quality corpus .npz (default: model/corpus/vq_corpus.npz in the workspace).")
_RESTORATION = flags.DEFINE_string("restoration-corpus", None,
                                   "Restoration corpus .npz (default: model/corpus/restoration_corpus.npz in the workspace).")
_OUT_DIR = flags.DEFINE_string("out-dir", None, "Where <id>.onnx and <id>.json go (default: model/tiny).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry to update (default: <out-dir>/registry.json).")
_REPORT = flags.DEFINE_string("report-out", None, "Write a JSON training report with run_provenance here.")


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _MODEL.value:
        raise cli.UsageError("--model is required; one of " + ", ".join(zoo.SPECS))
    spec = zoo.spec(_MODEL.value)
    corpora = train.Corpora(cli.path_or_default(_CORPUS.value, corpus.DEFAULT_PATH),
                            cli.path_or_default(_RESTORATION.value, restoration.DEFAULT_PATH))
    corpus_path = corpora.path_for(spec)
    out_dir = cli.path_or_default(_OUT_DIR.value, registry.DEFAULT_REGISTRY.parent)
    registry_path = cli.resolve_user_path(_REGISTRY.value) if _REGISTRY.value else out_dir / "registry.json"
    cli.guard_flags({"--report-out": _REPORT.value}, [corpus_path], registry_path)
    try:
        data = corpora.for_spec(spec)
    except FileNotFoundError as e:
        raise cli.UsageError(str(e)) from None
    out_dir.mkdir(parents=True, exist_ok=True)

    train_set = train.dataset(spec, data, "train")
    if _MAX_TRAIN.value and _MAX_TRAIN.value < len(train_set):
        rng = np.random.default_rng(_SEED.value)
        train_set = train_set.subset(np.sort(rng.choice(len(train_set), _MAX_TRAIN.value, replace=False)))
    val_set = train.dataset(spec, data, "val")
    soak_set = train.dataset(spec, data, "soak")
    print(f"{spec.id}: {spec.description}; train {len(train_set)}, val {len(val_set)}, soak {len(soak_set)}", flush=True)

    result = train.fit(spec, train_set, val_set, epochs=_EPOCHS.value, seed=_SEED.value,
                       progress=lambda s: print(s, flush=True))
    onnx_bytes = train.export_onnx(spec, result.model)
    onnx_path = out_dir / f"{spec.id}.onnx"
    atomic_write_bytes(onnx_path, onnx_bytes)

    soak = train.task_metrics(spec, train.predict_onnx(onnx_bytes, soak_set.inputs, [i.name for i in spec.inputs]), soak_set)
    entry = registry_files.upsert(
        registry_path,
        {
            "id": spec.id,
            "kind": spec.kind,
            "onnx": onnx_path.name,
            "opset": zoo.OPSET,
            "sha256": sha256_file(onnx_path),
            "description": spec.description,
        },
    )
    model = result.model
    mlp = spec.data == "frames"
    side = sidecar.build(
        entry,
        inputs=[{"name": i.name, "shape": zoo.sidecar_shape(i.shape)} for i in spec.inputs],
        outputs=[{"name": o.name, "shape": zoo.sidecar_shape(o.shape)} for o in spec.outputs],
        arch=spec.arch,
        n_params=zoo.n_params(model),
        features=corpus.FEATURES if mlp else None,
        input_mean=model.input_mean.tolist() if mlp else None,
        input_std=model.input_std.tolist() if mlp else None,
        notes=f"trained by //python:train_{spec.id}, seed {_SEED.value}, best epoch {result.best_epoch}",
    )
    atomic_write_json(out_dir / f"{spec.id}.json", side)

    summary = ", ".join(f"{k} {v:.5f}" for k, v in soak.items())
    print(f"{spec.id}: best epoch {result.best_epoch}/{len(result.history)}, {result.wall_time_s:.1f} s; soak (onnxruntime): {summary}")
    print(f"{spec.id}: wrote {onnx_path} ({onnx_path.stat().st_size} B, sha256 {entry['sha256']}), sidecar, registry entry")
    if _REPORT.value:
        report = {
            "schema": "tinyq-train-report-v1",
            "id": spec.id,
            "n_params": zoo.n_params(model),
            "best_epoch": result.best_epoch,
            "wall_time_s": round(result.wall_time_s, 1),
            "soak": soak,
            "history": result.history,
            "run_provenance": provenance.absl_provenance(
                tool="train_model", main_module=sys.modules[__name__],
                inputs=[(corpus_path, "corpus")], outputs=[(onnx_path, "fp32_model"), (out_dir / f"{spec.id}.json", "sidecar")],
            ),
        }
        if spec.kind == "nr":
            report["soak_baseline_luma_variance"] = train.luma_variance_baseline(data)
        provenance.write_report(cli.resolve_user_path(_REPORT.value), report)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
