"""tinyq.calibration: each way an .npz can fail to fit a model is its own message."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tinyq import calibration, testutil


def two_input_model():
    graph = helper.make_graph(
        [helper.make_node("Sub", ["ref", "dist"], ["diff"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("ref", TensorProto.FLOAT, ["batch", 1, "h", "w"]),
            helper.make_tensor_value_info("dist", TensorProto.FLOAT, ["batch", 1, "h", "w"]),
        ],
        [helper.make_tensor_value_info("diff", TensorProto.FLOAT, ["batch", 1, "h", "w"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def mlp_inputs():
    return calibration.graph_inputs(onnx.load_from_string(testutil.tiny_mlp(0)))


def good():
    return {"features": np.random.default_rng(0).random((8, 6), dtype=np.float32)}


def test_graph_inputs_reads_names_dims_and_types(mlp_inputs):
    assert mlp_inputs == [calibration.GraphInput("features", ("batch", 6), TensorProto.FLOAT)]


def test_good_arrays_pass(mlp_inputs, tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, **good())
    arrays = calibration.load_npz(path, mlp_inputs)
    assert arrays["features"].shape == (8, 6)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(feats=a.pop("features")), "missing key 'features'"),
        (lambda a: a.update(extra=np.zeros((8, 6), np.float32)), "extra key 'extra'"),
        (lambda a: a.update(features=a["features"].astype(np.float64)), "dtype float64"),
        (lambda a: a.update(features=a["features"][:, :, None]), "has rank 3"),
        (lambda a: a.update(features=a["features"][:, :5]), "dimension 1 is 5, the model fixes it to 6"),
        (lambda a: a.update(features=np.zeros((0, 6), np.float32)), "no samples"),
        (lambda a: a["features"].__setitem__((1, 2), np.nan), "values are NaN or infinite"),
        (lambda a: a["features"].__setitem__((3, 0), np.inf), "values are NaN or infinite"),
    ],
    ids=["missing_key", "extra_key", "dtype", "rank", "fixed_dim", "empty", "nan", "inf"],
)
def test_each_violation_is_named(mlp_inputs, tmp_path, mutate, message):
    arrays = good()
    mutate(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(calibration.CalibrationError) as e:
        calibration.load_npz(path, mlp_inputs)
    assert any(message in p for p in e.value.problems), e.value.problems
    assert str(path) in str(e.value)


def test_extra_key_allowed_when_declared(mlp_inputs):
    arrays = {**good(), "target": np.zeros(8, np.float32)}
    assert calibration.check_arrays(arrays, mlp_inputs, extra_keys=("target",)) == []


def test_two_inputs_must_share_the_sample_count():
    inputs = calibration.graph_inputs(two_input_model())
    arrays = {"ref": np.zeros((4, 1, 8, 8), np.float32), "dist": np.zeros((5, 1, 16, 16), np.float32)}
    problems = calibration.check_arrays(arrays, inputs)
    assert problems == ["inputs disagree on the sample count (axis 0): {'ref': 4, 'dist': 5}"]


def test_unreadable_and_missing_files(mlp_inputs, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(calibration.CalibrationError, match="not a readable .npz"):
        calibration.load_npz(bad, mlp_inputs)
    with pytest.raises(calibration.CalibrationError, match="file not found"):
        calibration.load_npz(tmp_path / "none.npz", mlp_inputs)


def test_tiny_data_warning_names_the_file_the_count_and_the_minimum(tmp_path):
    few = {"x": np.zeros((12, 3), np.float32), calibration.TARGET_KEY: np.zeros(12)}
    warning = calibration.tiny_data_warning("the calibration set", tmp_path / "c.npz", few, calibration.MIN_CALIBRATION_SAMPLES)
    assert warning is not None and "c.npz" in warning and "12 samples" in warning and "16" in warning
    enough = {"x": np.zeros((16, 3), np.float32)}
    assert calibration.tiny_data_warning("the calibration set", tmp_path / "c.npz", enough, 16) is None
