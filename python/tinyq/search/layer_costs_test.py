"""tinyq.search.layer_costs on a real graph: layers as a user reads them, every profiled node of
fp32 and int8 charged to one, and which layers count as slow."""

import numpy as np
import onnx
import pytest
from onnx import helper

from tinyq.quant import quantize
from tinyq.search import layer_costs, profile
from tinyq.search.layer_costs import LayerCost
from tinyq_testing.testutil import const, floats, save_graph


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """conv0-Relu, conv1-HardSwish, conv2 closing a residual Add over conv1's input, a mean."""
    rng = np.random.default_rng(0)
    conv = lambda name, x, w, y: helper.make_node("Conv", [x, w], [y], name=name, pads=[1, 1, 1, 1])  # noqa: E731
    nodes = [conv("conv0", "x", "w0", "c0"), helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             conv("conv1", "r0", "w1", "c1"), helper.make_node("HardSwish", ["c1"], ["h1"], name="hswish1"),
             conv("conv2", "h1", "w2", "c2"), helper.make_node("Add", ["r0", "c2"], ["a"], name="add"),
             helper.make_node("ReduceMean", ["a"], ["y"], name="mean", axes=[2, 3], keepdims=0)]
    inits = [const("w0", rng.standard_normal((16, 4, 3, 3)) * 0.3), const("w1", rng.standard_normal((16, 16, 3, 3)) * 0.1),
             const("w2", rng.standard_normal((16, 16, 3, 3)) * 0.1)]
    path = save_graph(tmp_path_factory.mktemp("m") / "m.onnx", nodes, [floats("x", ["n", 4, 8, 8])], [floats("y", ["n", 16])], inits)
    return onnx.load(str(path)), {"x": rng.random((8, 4, 8, 8), dtype=np.float32)}


def test_a_layer_is_a_weighted_op_and_the_weightless_ops_after_it(model):
    fp32, _ = model
    assert layer_costs.layers(fp32) == {"conv0": "conv0", "relu0": "conv0", "conv1": "conv1", "hswish1": "conv1",
                                        "conv2": "conv2", "add": "conv2", "mean": "conv2"}


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_every_profiled_node_is_charged_to_a_layer_and_no_time_is_lost(model, kind):
    fp32, feeds = model
    graph = fp32.SerializeToString() if kind == "fp32" else quantize.quantize_static_qdq(fp32, feeds, compact=False)
    (times,) = profile.node_times([graph], feeds, runs=1)
    charged = layer_costs.charge(times, fp32)
    assert set(charged) == {"conv0", "conv1", "conv2"}
    assert sum(charged.values()) == pytest.approx(sum(t.ms for t in times))
    if kind == "int8":  # each int8 convolution is charged to its own layer, by name
        convs = [t for t in times if t.op == "QLinearConv"]
        assert len(convs) == 3 and {layer_costs.layers(fp32)[layer_costs._TOKEN.sub("", t.name)] for t in convs} == set(charged)


def test_the_cost_table_is_in_graph_order_and_sums_each_side(model):
    fp32, feeds = model
    costs = layer_costs.layer_costs(fp32, quantize.quantize_static_qdq(fp32, feeds, compact=False), feeds, runs=2)
    assert [c.head for c in costs] == ["conv0", "conv1", "conv2"]
    assert costs[1].nodes == ("conv1", "hswish1") and all(c.fp32_ms > 0 and c.int8_ms > 0 for c in costs)
    assert "| conv1 | 2 |" in layer_costs.table(costs)


def test_slow_means_slower_by_a_share_of_itself_and_of_the_model():
    costs = [LayerCost("big", ("big",), 10.0, 8.0), LayerCost("slow", ("slow",), 1.0, 1.5),
             LayerCost("noise", ("noise",), 1.0, 1.04), LayerCost("tiny", ("tiny",), 0.01, 0.05)]
    # noise: within 5 % of itself; tiny: 0.04 ms is under 1 % of the model's 12 ms
    assert [c.head for c in layer_costs.slow_layers(costs)] == ["slow"]
    assert [d["slow"] for d in layer_costs.as_dicts(costs)] == [False, True, False, False]
