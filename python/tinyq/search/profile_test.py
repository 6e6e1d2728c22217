"""tinyq.search.profile on a real two-conv model: per-node times from onnxruntime's profiler, the
convolutions' multiply-accumulates, and the ceiling's arithmetic."""

import numpy as np
import onnx
import pytest
from onnx import helper

from tinyq.quant import quantize
from tinyq.search import profile
from tinyq_testing.testutil import const, floats, save_graph


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["c1"], ["y"], axes=[2, 3], keepdims=0)]
    inits = [const("w0", rng.standard_normal((16, 4, 3, 3)) * 0.3), const("b0", np.zeros(16)),
             const("w1", rng.standard_normal((16, 16, 3, 3)) * 0.1), const("b1", np.zeros(16))]
    path = save_graph(tmp_path_factory.mktemp("m") / "m.onnx", nodes, [floats("x", ["n", 4, 8, 8])], [floats("y", ["n", 16])], inits)
    fp32 = onnx.load(str(path))
    x = rng.random((2, 4, 8, 8), dtype=np.float32)
    return fp32, quantize.quantize_static_qdq(fp32, {"x": x}), {"x": x}


def test_conv_macs_counts_every_conv(models):
    fp32, _, feeds = models
    # output elements x (input channels x kernel) per conv, at batch 2
    assert profile.conv_macs(fp32, feeds) == 2 * 16 * 64 * (4 * 9) + 2 * 16 * 64 * (16 * 9)


def test_node_times_see_the_int8_kernels(models):
    _, int8, feeds = models
    (times,) = profile.node_times([int8], feeds, runs=3)
    convs = [t for t in times if t.op == "QLinearConv"]
    assert [(t.input_channels, t.output_channels, t.macs) for t in convs] == [(4, 16, 2 * 16 * 64 * 36), (16, 16, 2 * 16 * 64 * 144)]
    assert [t.trunk for t in convs] == [False, True]  # the 4-channel stem is not the trunk
    assert all(t.ms > 0 for t in times)


def test_breakdown_ceiling_runs_every_conv_at_the_trunk_rate(models):
    fp32, int8, feeds = models
    b = profile.breakdown(fp32, int8, feeds, runs=3)
    assert 0 <= b.overhead_ms < b.int8_ms and "QLinearConv" in b.int8_ops and "QLinearConv" not in b.fp32_ops
    assert b.ceiling_int8_ms is not None and b.ceiling_int8_ms > 0
    assert b.as_dict()["ceiling_speedup"] == pytest.approx(b.fp32_ms / b.ceiling_int8_ms)
