"""Quantisation-aware training of a zoo model into a QDQ int8 model.

Usage: bazel run //python:qat_train -- --config python/configs/<id>_qat.yaml --output model/tiny/<id>.int8.onnx
           [--fp32-output F] [--report-out R] [--epochs-fp32 N] [--epochs-qat N] [--lr-qat X] [--n-calibration N]
           [--seed S] [--smoke]

Phases (tinyq/zoo/qat.py): fp32 warm start, fake-quant insertion, QAT fine-tune at lr/10, export
through a fresh fp32 module and static QDQ calibrated on the real train split. Then the result
and static PTQ of the shipped fp32 model are both measured against the shipped fp32 model with
the accuracy gate's code, on the soak fixture and the synthetic set; the result is also measured
against its own QAT-conditioned fp32 model, which isolates the quantisation error QAT reduces. --smoke skips both
training phases for a fast round trip. Exit codes: 0 written, 2 bad config or input.
"""

import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from absl import flags

from tinyq.app import cli, provenance
from tinyq.io.fileio import atomic_write_all
from tinyq.judge import gate
from tinyq.model import calibration, loading, runner
from tinyq.quant import quantize
from tinyq.registry import layout, registry
from tinyq.zoo import corpus, qat, restoration, train, zoo

_CONFIG = flags.DEFINE_string("config", None, "python/configs/<id>_qat.yaml")
_OUTPUT = flags.DEFINE_string("output", None, "Where the int8 QDQ model goes.")
_FP32_OUTPUT = flags.DEFINE_string("fp32-output", None, "Also write the QAT-conditioned fp32 model here: the fp32 a registry "
                                   "names for a QAT model, so that the fp32 fallback and the int8 agree (written with the int8 "
                                   "or not at all).")
_REPORT = flags.DEFINE_string("report-out", None, "Write a tinyq-qat-report-v1 JSON report here.")
_EPOCHS_FP32 = flags.DEFINE_integer("epochs-fp32", None, "fp32 warm-start epochs (warm_start: train). Default 20.", lower_bound=0)
_EPOCHS_QAT = flags.DEFINE_integer("epochs-qat", None, "QAT fine-tune epochs. Default 10.", lower_bound=0)
_LR_QAT = flags.DEFINE_float("lr-qat", None, "QAT learning rate. Default: the fp32 learning rate / 10.", lower_bound=0)
_N_CAL = flags.DEFINE_integer("n-calibration", None, "Calibration samples from the train split. Default 64.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", None, "Seed. Default 0.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Skip both training phases (a fast round trip).")
_CORPUS = flags.DEFINE_string("corpus", None, "Video-quality corpus .npz (default: model/corpus/vq_corpus.npz in the workspace).")
_RESTORATION = flags.DEFINE_string("restoration-corpus", None,
                                   "Restoration corpus .npz (default: model/corpus/restoration_corpus.npz in the workspace).")
_REGISTRY = flags.DEFINE_string("registry", None, "Registry (default: model/tiny/registry.json in the workspace).")


def _measure(entry, fp32, int8_bytes, fixture, tmp):
    path = Path(tmp) / f"{entry.id}.{len(int8_bytes)}.onnx"
    path.write_bytes(int8_bytes)
    residual = gate.residuals_of_entry(entry)
    r = gate.gate_model(entry.id, fp32, path, gate.Budgets.of_entry(entry), real=fixture, residual=residual, latency=False)
    return {
        "int8_bytes": len(int8_bytes),
        "drop": {s.input_set: s.drop for s in r.sets},
        "pass": r.passed,
        "task_int8": r.task.get("int8"),
        "task_fp32": r.task.get("fp32"),
    }, path


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not _CONFIG.value or not _OUTPUT.value:
        raise cli.UsageError("--config and --output are required")
    try:
        cfg = qat.load_config(cli.resolve_user_path(_CONFIG.value))
    except qat.ConfigError as e:
        raise cli.UsageError(str(e)) from None
    for flag, name in ((_EPOCHS_FP32, "epochs_fp32"), (_EPOCHS_QAT, "epochs_qat"), (_LR_QAT, "lr_qat"), (_N_CAL, "n_calibration")):
        if flag.value is not None:
            setattr(cfg, name, flag.value)
    if _SEED.value is not None:
        cfg.train.seed = _SEED.value
    out = cli.resolve_user_path(_OUTPUT.value)
    conditioned_out = cli.resolve_user_path(_FP32_OUTPUT.value) if _FP32_OUTPUT.value else None
    reg_path = cli.path_or_default(_REGISTRY.value, registry.DEFAULT_REGISTRY)
    reg = cli.load_valid_registry(reg_path)
    entry = reg.get(cfg.model)
    report_out = cli.resolve_user_path(_REPORT.value) if _REPORT.value else None
    cli.guard_outputs({"--output": out, "--fp32-output": conditioned_out, "--report-out": report_out},
                      [cli.resolve_user_path(_CONFIG.value), entry.onnx], reg_path)
    spec = zoo.spec(cfg.model)
    corpora = train.Corpora(cli.path_or_default(_CORPUS.value, corpus.DEFAULT_PATH),
                            cli.path_or_default(_RESTORATION.value, restoration.DEFAULT_PATH))
    corpus_path = corpora.path_for(spec)
    try:
        data = corpora.for_spec(spec)
    except FileNotFoundError as e:
        raise cli.UsageError(str(e)) from None
    fixture_path = layout.fixture_path(reg.root, entry.id)
    fixture = calibration.load_npz(fixture_path, calibration.graph_inputs(entry.onnx), (calibration.TARGET_KEY,))

    start = time.monotonic()
    print(f"qat_train: {cfg.model}, {'smoke: no training' if _SMOKE.value else f'{cfg.epochs_qat} QAT epochs at lr {cfg.effective_lr_qat:g}'}",
          flush=True)
    try:
        result = qat.run_qat(cfg, data, shipped_onnx=entry.onnx, smoke=_SMOKE.value, progress=lambda s: print(s, flush=True))
    except qat.ConfigError as e:
        raise cli.UsageError(f"{_CONFIG.value}: {e}") from None
    atomic_write_all([(out, result.int8_bytes)] + ([(conditioned_out, result.fp32_bytes)] if conditioned_out else []))
    total = time.monotonic() - start

    # The baseline: static PTQ of the shipped fp32 model with the same calibration settings.
    model, _ = quantize.load_for_quantization(entry.onnx)
    arrays = qat.calibration_arrays(cfg, spec, train.dataset(spec, data, "train"))
    static = quantize.quantize_static_qdq(model, arrays, method=cfg.calibrate_method, per_channel=cfg.per_channel,
                                          exclude_nodes=cfg.fp32_nodes)
    with tempfile.TemporaryDirectory() as tmp:
        m_static, _ = _measure(entry, entry.onnx, static, fixture, tmp)
        m_qat, qat_path = _measure(entry, entry.onnx, result.int8_bytes, fixture, tmp)
        # What QAT optimises: the int8 model against its own QAT-conditioned fp32 model.
        conditioned = Path(tmp) / "conditioned.fp32.onnx"
        conditioned.write_bytes(result.fp32_bytes)
        m_self, _ = _measure(entry, conditioned, result.int8_bytes, fixture, tmp)
        names = [i.name for i in calibration.graph_inputs(entry.onnx)]
        feeds = {n: fixture[n][:16] for n in names}
        fp32_out = runner.run_all(runner.session(entry.onnx), feeds)[0]
        int8_out = runner.run_all(runner.session(qat_path), feeds)[0]

    fp32_epoch, qat_epoch = result.phases["fp32"]["epoch_time_s"], result.phases["qat"]["epoch_time_s"]
    ratio = round(qat_epoch / fp32_epoch, 3) if fp32_epoch and qat_epoch else None
    for label, m in (("static PTQ", m_static), ("QAT", m_qat), ("QAT (against its own conditioned fp32)", m_self)):
        drops = ", ".join(f"{k} {v:.3e}" for k, v in m["drop"].items() if v is not None)
        print(f"qat_train: fp32 -> {label}: {drops}; {m['int8_bytes']} B; {'passes' if m['pass'] else 'FAILS'} the gate")
    print(f"qat_train: wrote {out} ({len(result.int8_bytes)} B, QDQ {result.qdq_ops}) in {total:.1f} s; "
          f"QAT/fp32 epoch time ratio {ratio}")
    if _REPORT.value:
        provenance.write_report(cli.resolve_user_path(_REPORT.value), {
            "schema": "tinyq-qat-report-v1",
            "model": cfg.model,
            "output": str(out),
            "smoke": _SMOKE.value,
            "n_params": result.n_params,
            "settings": asdict(cfg),
            "phases": result.phases,
            "qat_fp32_epoch_time_ratio": ratio,
            "wall_time_s": round(total, 2),
            "qdq_ops": result.qdq_ops,
            "fp32_bytes": loading.model_bytes_on_disk(entry.onnx),
            "soak_fixture": str(fixture_path),
            "fp32_to_static_ptq": m_static,
            "fp32_to_qat": m_qat,
            "conditioned_fp32_to_qat": m_self,
            "outputs": {"fp32": fp32_out.ravel().tolist(), "int8": int8_out.ravel().tolist(), "samples": 16},
            "run_provenance": provenance.absl_provenance(
                tool="qat_train", main_module=sys.modules[__name__],
                inputs=[(entry.onnx, "fp32_model"), (corpus_path, "corpus"), (cli.resolve_user_path(_CONFIG.value), "config")],
                outputs=[(out, "int8_model")] + ([(conditioned_out, "qat_conditioned_fp32_model")] if conditioned_out else []),
            ),
        })
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.run(main)
