"""Writes each zoo model's calibration set (train split), validation set (val split) and soak
fixture (soak split).

Usage: tools/bazel run //python:build_calibration_set -- [--models a,b] [--n-calibration N]
           [--n-validation N] [--n-soak N]

  model/tiny/calibration/<id>.npz     one [N, ...] float32 array per ONNX input, from the train split
  model/tiny/validation/<id>.val.npz  the same for the val split, plus "target": what quantisation
                                      choices (ptq_auto) are made on
  model/tiny/fixtures/<id>.soak.npz   the same for the soak split, plus "target" (VMAF, or the
                                      reference luma for the filter): held out, it only judges

Input names and shapes are checked against each model's ONNX graph before anything is written.
"""

import sys

import numpy as np
from absl import flags

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_npz
from tinyq.model import calibration
from tinyq.registry import layout, registry
from tinyq.zoo import corpus, restoration, train, zoo

_MODELS = flags.DEFINE_list("models", None, "Model ids (default: every zoo model in the registry).")
_N_CAL = flags.DEFINE_integer("n-calibration", 256, "Calibration samples per model.", lower_bound=1)
_N_VAL = flags.DEFINE_integer("n-validation", 512, "At most this many validation samples per model.", lower_bound=1)
_N_SOAK = flags.DEFINE_integer("n-soak", 768, "At most this many soak samples per model.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the sample selection.")
_CORPUS = flags.DEFINE_string("corpus", None, "Video-quality corpus .npz (default: model/corpus/vq_corpus.npz in the workspace).")
_RESTORATION = flags.DEFINE_string("restoration-corpus", None,
                                   "Restoration corpus .npz (default: model/corpus/restoration_corpus.npz in the workspace).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")
_REPORT = flags.DEFINE_string("report-out", None, "Write a JSON report with run_provenance here.")


def _pick(n_total: int, n: int, seed: int) -> np.ndarray:
    if n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, n, replace=False))


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    corpora = train.Corpora(cli.path_or_default(_CORPUS.value, corpus.DEFAULT_PATH),
                            cli.path_or_default(_RESTORATION.value, restoration.DEFAULT_PATH))
    reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    cli.guard_flags({"--report-out": _REPORT.value}, [], reg_path)
    reg = cli.load_valid_registry(reg_path)
    ids = _MODELS.value or [m.id for m in reg.models if m.id in zoo.SPECS]
    outputs = []
    for mid in ids:
        try:
            entry, spec = reg.get(mid), zoo.spec(mid)
        except KeyError as e:
            raise cli.UsageError(str(e.args[0])) from None
        try:
            data = corpora.for_spec(spec)
        except FileNotFoundError as e:
            raise cli.UsageError(str(e)) from None
        inputs = calibration.graph_inputs(entry.onnx)
        names = [i.name for i in inputs]
        if names != [i.name for i in spec.inputs]:
            raise cli.UsageError(f"{entry.onnx}: graph inputs {names} differ from the zoo spec's {[i.name for i in spec.inputs]}")

        cal = train.dataset(spec, data, "train")
        cal = cal.subset(_pick(len(cal), _N_CAL.value, _SEED.value))
        cal_arrays = dict(zip(names, cal.inputs))
        held = {}
        for split, n, seed in (("val", _N_VAL.value, _SEED.value + 2), ("soak", _N_SOAK.value, _SEED.value + 1)):
            ds = train.dataset(spec, data, split)
            ds = ds.subset(_pick(len(ds), n, seed))
            held[split] = {**dict(zip(names, ds.inputs)), calibration.TARGET_KEY: ds.target.astype(np.float32)}
        for path, arrays, extra in (
            (layout.calibration_path(reg.root, mid), cal_arrays, ()),
            (layout.validation_path(reg.root, mid), held["val"], (calibration.TARGET_KEY,)),
            (layout.fixture_path(reg.root, mid), held["soak"], (calibration.TARGET_KEY,)),
        ):
            problems = calibration.check_arrays(arrays, inputs, extra)
            if problems:
                raise cli.UsageError("\n".join(f"{path}: {p}" for p in problems))
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_npz(path, arrays)
            outputs.append((path, path.parent.name))
            shapes = {k: list(v.shape) for k, v in arrays.items()}
            print(f"{mid}: wrote {path} {shapes}")
    if _REPORT.value:
        report = {
            "schema": "tinyq-build-calibration-set-report-v1",
            "models": ids,
            "run_provenance": provenance.absl_provenance(
                tool="build_calibration_set", main_module=sys.modules[__name__],
                inputs=[(p, "corpus") for p in corpora.paths.values() if p.is_file()] + [(reg_path, "registry")], outputs=outputs,
            ),
        }
        provenance.write_report(cli.resolve_user_path(_REPORT.value), report)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
