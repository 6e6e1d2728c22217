"""tinyq.model.calibration: each way an .npz can fail to fit a model is its own message."""

import os
import tracemalloc
import zipfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tinyq.io import errors
from tinyq.model import calibration
from tinyq_testing import testutil


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
    with pytest.raises(calibration.CalibrationError, match=r"not an \.npz \(zip\) archive") as e:
        calibration.load_npz(bad, mlp_inputs)
    assert "pickled" not in str(e.value) and "np.savez('bad.npz', features=array)" in str(e.value)
    with pytest.raises(calibration.CalibrationError, match="file not found"):
        calibration.load_npz(tmp_path / "none.npz", mlp_inputs)


def test_tiny_data_warning_names_the_file_the_count_and_the_minimum(tmp_path):
    few = {"x": np.zeros((12, 3), np.float32), calibration.TARGET_KEY: np.zeros(12)}
    warning = calibration.tiny_data_warning("the calibration set", tmp_path / "c.npz", few, calibration.MIN_CALIBRATION_SAMPLES)
    assert warning is not None and "c.npz" in warning and "12 samples" in warning and "16" in warning
    enough = {"x": np.zeros((16, 3), np.float32)}
    assert calibration.tiny_data_warning("the calibration set", tmp_path / "c.npz", enough, 16) is None


# --- hostile files: caps checked from the headers, regular files only, messages that say what is wrong


def test_an_npz_header_declaring_2_tib_is_too_large_before_anything_is_allocated(mlp_inputs, tmp_path):
    path = testutil.npz_with_header(tmp_path / "huge.npz", "features", (2**38, 2), data=b"\0" * 64)
    tracemalloc.start()
    try:
        with pytest.raises(errors.TooLarge) as e:
            calibration.load_npz(path, mlp_inputs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(e.value)
    assert e.value.exit_code == errors.EXIT_TOO_LARGE == 10
    assert "\n" not in message and str(path) in message and "'features'" in message, message
    assert "2,199,023,255,552 bytes" in message and f"{calibration.MAX_NPZ_BYTES:,} bytes" in message, message
    assert peak < 4 * 2**20, peak  # nothing of the declared size was allocated


def test_an_npz_decompressing_past_the_cap_is_too_large_before_it_is_inflated(mlp_inputs, tmp_path, monkeypatch):
    """The audit's zip bomb (1.1 MB inflating to 1.2 GB), at a 1 MiB cap: refused from the zip directory."""
    monkeypatch.setattr(calibration, "MAX_NPZ_BYTES", 2**20)
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, features=np.zeros((4 * 2**20 // 24, 6), np.float32))
    assert path.stat().st_size < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(errors.TooLarge, match=r"decompress to 4,194,\d{3} bytes \(4.0 MiB; entry 'features' .* "
                                                  r"over tinyq's cap of 1,048,576 bytes"):
            calibration.load_npz(path, mlp_inputs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


def test_more_samples_than_the_cap_is_too_large_even_when_they_hold_no_bytes(mlp_inputs, tmp_path):
    path = testutil.npz_with_header(tmp_path / "rows.npz", "features", (calibration.MAX_SAMPLES + 1, 0))
    with pytest.raises(errors.TooLarge, match=r"'features' declares 1,000,001 samples \(axis 0\), over tinyq's cap of 1,000,000"):
        calibration.load_npz(path, mlp_inputs)


def test_more_entries_than_the_cap_is_too_large(mlp_inputs, tmp_path):
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(calibration.MAX_NPZ_ENTRIES + 1):
            zf.writestr(f"x{i}.npy", b"")
    with pytest.raises(errors.TooLarge, match=f"{calibration.MAX_NPZ_ENTRIES + 1:,} entries, over tinyq's cap"):
        calibration.load_npz(path, mlp_inputs)


def test_an_entry_shorter_than_its_header_declares_is_refused(mlp_inputs, tmp_path):
    path = testutil.npz_with_header(tmp_path / "short.npz", "features", (1000, 6), data=b"\0" * 100)
    with pytest.raises(calibration.CalibrationError, match=r"declares shape \[1000, 6\] float32 \(24,000 bytes\) but holds 100"):
        calibration.load_npz(path, mlp_inputs)


def test_an_object_array_is_refused_without_unpickling(mlp_inputs, tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, features=np.array([{"a": 1}] * 8, dtype=object))
    with pytest.raises(calibration.CalibrationError, match="holds Python objects .* tinyq never unpickles"):
        calibration.load_npz(path, mlp_inputs)


def test_a_single_npy_is_refused_with_the_npz_to_write(mlp_inputs, tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, good()["features"])
    with pytest.raises(calibration.CalibrationError) as e:
        calibration.load_npz(path, mlp_inputs)
    assert e.value.problems == ["is a single .npy array, not an .npz; pass an .npz with one entry per model input, "
                                "e.g. np.savez('c.npz', features=array)"]


def test_an_empty_file_is_named_empty(mlp_inputs, tmp_path):
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(calibration.CalibrationError, match="is an empty file, not an .npz"):
        calibration.load_npz(tmp_path / "e.npz", mlp_inputs)


def test_a_directory_or_fifo_is_refused_and_never_blocks(mlp_inputs, tmp_path):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(calibration.CalibrationError, match="d.npz: is a directory; pass a file"):
        calibration.load_npz(tmp_path / "d.npz", mlp_inputs)
    fifo = tmp_path / "f.npz"
    os.mkfifo(fifo)
    with pytest.raises(calibration.CalibrationError, match=r"f.npz: is a FIFO \(named pipe\), not a regular file"):
        testutil.within(5, lambda: calibration.load_npz(fifo, mlp_inputs), [fifo])


def test_dtype_advice_names_a_numpy_type_that_exists():
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "strings",
                              [helper.make_tensor_value_info("s", TensorProto.STRING, ["n"])],
                              [helper.make_tensor_value_info("t", TensorProto.STRING, ["n"])])
    inputs = calibration.graph_inputs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    problems = calibration.check_arrays({"s": np.array(["a", "b"])}, inputs)
    assert len(problems) == 1 and "np.object" not in problems[0] and "numeric inputs only" in problems[0], problems
    mlp = calibration.graph_inputs(onnx.load_from_string(testutil.tiny_mlp(0)))
    [problem] = calibration.check_arrays({"features": np.zeros((4, 6), np.float64)}, mlp)
    assert problem.endswith("the model's input is float32; convert with .astype(np.float32)"), problem


@pytest.mark.parametrize("content, message", testutil.NOT_ONNX_FILES, ids=testutil.NOT_ONNX_IDS)
def test_a_model_that_is_not_onnx_is_named(tmp_path, content, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(calibration.ModelFileError, match=f"m.onnx: {message}") as e:
        calibration.graph_inputs(path)
    assert isinstance(e.value, errors.UsageError) and e.value.exit_code == 2


def test_a_model_path_that_is_a_directory_or_fifo_is_named(tmp_path):
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(calibration.ModelFileError, match="d.onnx: is a directory"):
        calibration.read_model(tmp_path / "d.onnx")
    fifo = tmp_path / "f.onnx"
    os.mkfifo(fifo)
    with pytest.raises(calibration.ModelFileError, match="f.onnx: is a FIFO .*, not a regular file"):
        testutil.within(5, lambda: calibration.read_model(fifo), [fifo])
    with pytest.raises(calibration.ModelFileError, match="none.onnx: file not found"):
        calibration.read_model(tmp_path / "none.onnx")
