"""//python:train_model: a short seeded run is deterministic and ships a valid registry entry."""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

TRAIN = Path.cwd() / "python" / "train_model"
VALIDATE = Path.cwd() / "python" / "validate_registry"
CORPUS = Path.cwd() / "model" / "corpus" / "vq_corpus.npz"


def train(out_dir, *args):
    r = subprocess.run(
        [str(TRAIN), f"--corpus={CORPUS}", f"--out-dir={out_dir}", *args], capture_output=True, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("BUILD_")},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "model, args",
    [("vmaf_tiny_v2", ["--epochs=3"]), ("fr_patch_v1", ["--epochs=1", "--max-train=96"])],
)
def test_seeded_run_is_deterministic(tmp_path, model, args):
    a, b = tmp_path / "a", tmp_path / "b"
    out = train(a, f"--model={model}", *args)
    train(b, f"--model={model}", *args)
    assert "epoch 1/" in out.stdout and "soak (onnxruntime)" in out.stdout
    assert digest(a / f"{model}.onnx") == digest(b / f"{model}.onnx")
    assert (a / f"{model}.json").read_bytes() == (b / f"{model}.json").read_bytes()
    assert (a / "registry.json").read_bytes() == (b / "registry.json").read_bytes()


def test_other_seed_gives_other_weights(tmp_path):
    train(tmp_path / "a", "--model=vmaf_tiny_v2", "--epochs=2")
    train(tmp_path / "b", "--model=vmaf_tiny_v2", "--epochs=2", "--seed=1")
    assert digest(tmp_path / "a" / "vmaf_tiny_v2.onnx") != digest(tmp_path / "b" / "vmaf_tiny_v2.onnx")


def test_shipped_entry_validates(tmp_path):
    train(tmp_path, "--model=vmaf_tiny_v2", "--epochs=2")
    sidecar = json.loads((tmp_path / "vmaf_tiny_v2.json").read_text())
    assert sidecar["input_names"] == ["features"] and sidecar["input_shapes"] == [[-1, 6]]
    assert len(sidecar["input_mean"]) == len(sidecar["features"]) == 6 and sidecar["n_params"] == 257
    r = subprocess.run([str(VALIDATE), str(tmp_path / "registry.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "1 models valid" in r.stdout
