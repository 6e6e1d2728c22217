"""tinyq.quant.rewrites: each rewrite leaves every output identical and puts its convolutions on
onnxruntime's fused int8 path; negative controls show the comparison catches a broken rewrite."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from tinyq.quant import fusion, quantize, rewrites
from tinyq_testing.testutil import const, floats, save_graph

SIDE = 12


def stem_cnn(tmp_path):
    """3-channel stem (input channels off the fused path), a 16 -> 4 conv (output channels off
    it), a 4 -> 16 conv, a 16 -> 1 head (one output channel: per-tensor bias scale next to
    per-channel weights) and a mean."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="narrow", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="wide", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"], name="head", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c3"], ["y"], name="mean", axes=[2, 3], keepdims=0),
    ]
    inits = [const("w0", rng.standard_normal((16, 3, 3, 3)) * 0.3), const("b0", rng.standard_normal(16) * 0.1),
             const("w1", rng.standard_normal((4, 16, 3, 3)) * 0.1), const("b1", rng.standard_normal(4) * 0.1),
             const("w2", rng.standard_normal((16, 4, 3, 3)) * 0.2), const("b2", rng.standard_normal(16) * 0.1),
             const("w3", rng.standard_normal((1, 16, 3, 3)) * 0.2), const("b3", rng.standard_normal(1) * 0.1)]
    path = save_graph(tmp_path / "stem.onnx", nodes, [floats("x", ["n", 3, SIDE, SIDE])], [floats("y", ["n", 1])], inits)
    return onnx.load(str(path))


def images(n, seed):
    return np.random.default_rng(seed).random((n, 3, SIDE, SIDE), dtype=np.float32)


def int8(model, per_channel, names=()):
    return quantize.quantize_static_qdq(model, {"x": images(32, 1)}, per_channel=per_channel, rewrites=names)


def outputs(model_bytes, x, **config):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    for k, v in config.items():
        opts.add_session_config_entry(k, v)
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def misses(model_bytes):
    return [m for k in rewrites.conv_kernels(model_bytes) for m in k.misses]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("names, fixed", [(["pad_conv_inputs"], "input channels"), (["pad_conv_outputs"], "output channels"),
                                          (["pad_conv_inputs", "pad_conv_outputs"], "channels")])
def test_rewrite_changes_no_output_and_fixes_its_condition(tmp_path, per_channel, names, fixed):
    model = stem_cnn(tmp_path)
    plain, rewritten = int8(model, per_channel), int8(model, per_channel, names)
    assert any(fixed in m for m in misses(plain))
    assert not any(fixed in m for m in misses(rewritten)), misses(rewritten)
    assert fusion.fusion(rewritten) == [], "a rewritten conv must still fuse into QLinearConv"
    x = images(8, 2)
    np.testing.assert_array_equal(outputs(rewritten, x), outputs(plain, x))
    # onnxruntime's x64quantprecision transformer rewrites int8 kernels' initialisers in place.
    np.testing.assert_array_equal(outputs(rewritten, x, **{"session.x64quantprecision": "1"}), outputs(plain, x))


def test_every_conv_on_the_fused_path_after_both(tmp_path):
    kernels = rewrites.conv_kernels(int8(stem_cnn(tmp_path), False, ["pad_conv_inputs", "pad_conv_outputs"]))
    assert [(k.input_channels, k.output_channels, k.fused) for k in kernels] == [
        (4, 16, True), (16, 16, True), (4, 16, True), (16, 16, True)]


def test_unchanged_where_nothing_misses(tmp_path):
    model = stem_cnn(tmp_path)
    fused = onnx.load_from_string(int8(model, False, ["pad_conv_inputs", "pad_conv_outputs"]))
    again = onnx.ModelProto.FromString(fused.SerializeToString())
    assert rewrites.apply(again, ["pad_conv_inputs", "pad_conv_outputs"]) == []
    assert again.SerializeToString() == fused.SerializeToString()


def _initialiser(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def _weight_of(model, conv_name_part):
    """The int8 weight initialiser feeding the Conv whose output name contains conv_name_part."""
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and conv_name_part(n))
    return _initialiser(model, producer[conv.input[1]].input[0])


def test_negative_control_inputs(tmp_path):
    """Without the weight change the padded graph does not run; with nonzero padded weight columns
    and a pad value other than the zero point the output changes, and the comparison sees it."""
    model = onnx.load_from_string(int8(stem_cnn(tmp_path), False))
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    rewrites.apply(rewritten, ["pad_conv_inputs"])
    pad = next(n for n in rewritten.graph.node if n.op_type == "Pad")
    conv = next(n for n in rewritten.graph.node if n.op_type == "Conv" and any(
        p.output[0] == n.input[0] for p in rewritten.graph.node if p.op_type == "DequantizeLinear" and p.input[0] == pad.output[0]))
    x = images(4, 3)

    unpadded_weight = onnx.ModelProto.FromString(rewritten.SerializeToString())
    w = _weight_of(unpadded_weight, lambda n: n.input[1] == conv.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w)[:, :3], w.name))
    with pytest.raises(Exception):
        outputs(unpadded_weight.SerializeToString(), x)

    broken = onnx.ModelProto.FromString(rewritten.SerializeToString())
    w = _weight_of(broken, lambda n: n.input[1] == conv.input[1])
    a = numpy_helper.to_array(w).copy()
    a[:, 3:] = 20
    w.CopyFrom(numpy_helper.from_array(a, w.name))
    value = _initialiser(broken, pad.input[2])
    value.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(value) + np.uint8(40), value.name))
    assert not np.array_equal(outputs(broken.SerializeToString(), x), outputs(model.SerializeToString(), x))


def test_negative_control_outputs(tmp_path):
    """Without the weight change the padded graph does not run; slicing the wrong channels back
    changes the output, and the comparison sees it."""
    model = onnx.load_from_string(int8(stem_cnn(tmp_path), False))
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    rewrites.apply(rewritten, ["pad_conv_outputs"])
    sliced = next(n for n in rewritten.graph.node if n.op_type == "Slice")
    x = images(4, 3)

    unpadded_weight = onnx.ModelProto.FromString(rewritten.SerializeToString())
    padded = [t for t in unpadded_weight.graph.initializer if tuple(t.dims) == (16, 16, 3, 3)
              and not numpy_helper.to_array(t)[4:].any() and numpy_helper.to_array(t)[1:4].any()]
    assert len(padded) == 1  # narrow's, 4 rows padded to 16
    padded[0].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(padded[0])[:4], padded[0].name))
    with pytest.raises(Exception):
        outputs(unpadded_weight.SerializeToString(), x)

    broken = onnx.ModelProto.FromString(rewritten.SerializeToString())
    for name, value in ((sliced.input[1], 1), (sliced.input[2], 5)):
        _initialiser(broken, name).CopyFrom(numpy_helper.from_array(np.array([value], np.int64), name))
    assert not np.array_equal(outputs(broken.SerializeToString(), x), outputs(model.SerializeToString(), x))


def test_unknown_rewrite_is_refused():
    with pytest.raises(ValueError, match="unknown rewrite"):
        rewrites.check_names(["pad_everything"])


def test_a_weight_shared_by_two_convs_is_padded_for_both_or_neither(tmp_path):
    """A siamese stem: two inputs through one 3-channel conv weight. Padding it for one conv alone
    would break the other; the outputs stay identical either way."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["a", "w", "b"], ["ca"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b_in", "w", "b"], ["cb"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["ca", "cb"], ["s"]),
             helper.make_node("ReduceMean", ["s"], ["y"], axes=[2, 3], keepdims=0)]
    inits = [const("w", rng.standard_normal((16, 3, 3, 3)) * 0.3), const("b", np.zeros(16))]
    path = save_graph(tmp_path / "siamese.onnx", nodes, [floats("a", ["n", 3, SIDE, SIDE]), floats("b_in", ["n", 3, SIDE, SIDE])],
                      [floats("y", ["n", 16])], inits)
    model = onnx.load(str(path))
    cal = {"a": images(32, 1), "b_in": images(32, 2)}
    plain = quantize.quantize_static_qdq(model, cal)
    rewritten = quantize.quantize_static_qdq(model, cal, rewrites=["pad_conv_inputs"])
    feeds = {"a": images(4, 3), "b_in": images(4, 4)}
    run = lambda m: ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(run(rewritten), run(plain))
