"""Each shipped model loads in onnxruntime and matches the I/O its sidecar declares."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tinyq.app import starlark
from tinyq.registry import registry

REGISTRY = Path("model/tiny/registry.json")


def zoo_ids():
    return starlark.constant(Path("model/zoo.bzl"), "ZOO_MODEL_IDS")


REG = registry.load(REGISTRY)


def test_zoo_list_matches_the_registry():
    assert sorted(zoo_ids()) == sorted(m.id for m in REG.models)


@pytest.mark.parametrize("model_id", zoo_ids())
def test_model_io_matches_sidecar(model_id):
    entry = REG.get(model_id)
    sidecar = json.loads(entry.sidecar.read_text())
    sess = ort.InferenceSession(str(entry.onnx), providers=["CPUExecutionProvider"])

    def dims(shape):
        return [d if isinstance(d, int) else -1 for d in shape]

    assert [i.name for i in sess.get_inputs()] == sidecar["input_names"]
    assert [dims(i.shape) for i in sess.get_inputs()] == sidecar["input_shapes"]
    assert [o.name for o in sess.get_outputs()] == sidecar["output_names"]
    assert [dims(o.shape) for o in sess.get_outputs()] == sidecar["output_shapes"]
    assert sidecar["input_name"] == sidecar["input_names"][0]
    assert sidecar["output_name"] == sidecar["output_names"][0]
    assert all(i.type == "tensor(float)" for i in sess.get_inputs())

    proto = onnx.load(str(entry.onnx))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [sidecar["opset"]] == [17]

    # Run it with a batch and spatial size that differ from the export's: the axes are dynamic.
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else {0: 3}.get(k, 40 if k == 2 else 56) for k, d in enumerate(i.shape)]
        feeds[i.name] = np.random.default_rng(0).random(shape, dtype=np.float32)
    outs = sess.run(None, feeds)
    for out, declared in zip(outs, sidecar["output_shapes"]):
        assert out.shape[0] == 3 and all(d == -1 or d == s for d, s in zip(declared, out.shape))
        assert np.all(np.isfinite(out))
    if entry.kind == "filter":
        assert outs[0].shape == feeds[sidecar["input_name"]].shape


@pytest.mark.parametrize("model_id", [m for m in zoo_ids() if m.startswith("vmaf_tiny")])
def test_mlp_scaler_lives_in_the_graph(model_id):
    entry = REG.get(model_id)
    sidecar = json.loads(entry.sidecar.read_text())
    inits = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(entry.onnx)).graph.initializer]
    for key in ("input_mean", "input_std"):
        want = np.array(sidecar[key], np.float32)
        assert any(a.shape == want.shape and np.allclose(a, want) for a in inits), key
    assert len(sidecar["features"]) == 6
