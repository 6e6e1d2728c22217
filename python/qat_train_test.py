"""//python:qat_train: the smoke round trip writes a loadable QDQ model; bad configs are refused."""

import json
import os
import subprocess
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

TOOL = Path.cwd() / "python" / "qat_train"
CONFIG = Path.cwd() / "python" / "configs" / "fr_patch_v1_qat.yaml"


def run(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    return subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, env=env)


def test_smoke_round_trip_writes_a_loadable_qdq_model(tmp_path):
    out, report, conditioned = tmp_path / "fr.int8.onnx", tmp_path / "r.json", tmp_path / "fr.conditioned.onnx"
    r = run("--config", CONFIG, "--output", out, "--fp32-output", conditioned, "--report-out", report, "--smoke")
    assert r.returncode == 0, r.stderr[-3000:]
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in onnx.load(str(conditioned)).graph.node}
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rep = json.loads(report.read_text())
    assert rep["schema"] == "tinyq-qat-report-v1" and rep["smoke"] is True and rep["n_params"] == 34945
    assert rep["phases"]["qat"]["epochs"] == 0 and rep["phases"]["fake_quant"]["weights"] == "int8 symmetric per-channel"
    assert rep["phases"]["export"]["calibration"] == "64 samples of the train split"
    assert set(rep["fp32_to_static_ptq"]["drop"]) == set(rep["fp32_to_qat"]["drop"]) == {"soak", "synthetic"}
    assert len(rep["outputs"]["fp32"]) == len(rep["outputs"]["int8"]) == 16
    assert [o["path"] for o in rep["run_provenance"]["outputs"]] == [str(out), str(conditioned)]


def test_fp32_output_never_overwrites_the_shipped_fp32(tmp_path):
    shipped = Path.cwd() / "model" / "tiny" / "fr_patch_v1.onnx"
    before = shipped.read_bytes()
    r = run("--config", CONFIG, "--output", tmp_path / "o.onnx", "--fp32-output", shipped, "--smoke")
    assert r.returncode == 9 and "is the input" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert shipped.read_bytes() == before and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("name", ["fr_patch_v1.onnx", "fr_patch_v1.int8.onnx", "registry.json", "fr_patch_v1.json"])
def test_output_never_overwrites_a_file_the_registry_names(tmp_path, name):
    target = Path.cwd() / "model" / "tiny" / name
    before = target.read_bytes()
    r = run("--config", CONFIG, "--output", target, "--smoke")
    assert r.returncode == 9 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    "text, message",
    [
        ("model: fr_patch_v1\nqat:\n  epochs_qat: ten\n", "qat.epochs_qat must be an integer"),
        ("model: fr_patch_v1\nqat:\n  epochs_qatt: 3\n", "unknown key qat.epochs_qatt"),
        ("model: fr_patch_v1\ntrain:\n  lr: fast\n", "train.lr must be a number"),
        ("model: fr_patch_v1\nextra: 1\n", "unknown key extra"),
        ("model: nope\n", "is not a zoo model"),
        ("qat: {}\n", "model is required"),
        ("model: fr_patch_v1\nqat:\n  calibrate_method: guess\n", "calibrate_method must be"),
        ("model: [\n", "not valid YAML"),
        ("model: fr_patch_v1\nqat:\n  fp32_nodes: /Mul\n", "qat.fp32_nodes must be a list of node names"),
        ("model: fr_patch_v1\nqat:\n  fp32_nodes: [/NoSuchNode]\n", "are not nodes of the exported graph"),
    ],
    ids=["wrong_type", "unknown_qat_key", "wrong_train_type", "unknown_top_key", "unknown_model", "no_model",
         "bad_method", "bad_yaml", "fp32_nodes_not_a_list", "fp32_nodes_unknown"],
)
def test_bad_config_exits_2_naming_the_key(tmp_path, text, message):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    r = run("--config", config, "--output", tmp_path / "o.onnx", "--smoke")
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert str(config) in r.stderr and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "huge"])
def test_a_config_that_is_not_a_small_regular_file_is_refused_at_once(tmp_path, kind):
    config = tmp_path / "c.yaml"
    if kind == "fifo":
        os.mkfifo(config)  # nobody writes it: a blocking read would hang forever
    elif kind == "dev_zero":
        config = Path("/dev/zero")  # endless: a whole read would fill memory
    else:
        with open(config, "wb") as f:
            f.truncate(1 << 40)  # 1 TiB, sparse
    r = subprocess.run([str(TOOL), "--config", config, "--output", tmp_path / "o.onnx", "--smoke"], capture_output=True,
                       text=True, timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("BUILD_")})
    assert r.returncode == 2 and str(config) in r.stderr and "regular" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o.onnx").exists()
