"""tinyq.model.runner with hostile model paths: a file that is not ONNX, empty, a directory or a FIFO is a
one-line UsageError naming the file (measure_quant_drop's loaders), and a FIFO never blocks."""

import os

import pytest

from tinyq.io import errors
from tinyq.model import calibration, runner
from tinyq_testing import testutil


@pytest.mark.parametrize("content, message", testutil.NOT_ONNX_FILES, ids=testutil.NOT_ONNX_IDS)
def test_a_session_of_a_file_that_is_not_onnx_names_the_file(tmp_path, content, message):
    path = tmp_path / "fp32.onnx"
    path.write_bytes(content)
    with pytest.raises(calibration.ModelFileError, match=f"fp32.onnx: {message}") as e:
        runner.session(str(path))
    assert isinstance(e.value, errors.UsageError) and "\n" not in str(e.value)


def test_a_session_of_a_directory_or_fifo_is_refused_and_never_blocks(tmp_path):
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(calibration.ModelFileError, match="d.onnx: is a directory"):
        runner.session(str(tmp_path / "d.onnx"))
    fifo = tmp_path / "f.onnx"
    os.mkfifo(fifo)
    with pytest.raises(calibration.ModelFileError, match=r"f.onnx: is a FIFO \(named pipe\), not a regular file"):
        testutil.within(5, lambda: runner.session(str(fifo)), [fifo])


def test_a_session_of_a_real_model_still_runs(tmp_path):
    import numpy as np

    path = tmp_path / "m.onnx"
    path.write_bytes(testutil.tiny_mlp(0))
    sess = runner.session(path)
    [out] = runner.run_all(sess, {"features": np.zeros((3, 6), np.float32)})
    assert out.shape == (3, 1)
