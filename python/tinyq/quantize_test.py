"""tinyq.quantize: each real-export trap is repaired (and really breaks plain quantize_dynamic),
what cannot be repaired is refused with the fix, and every encoding stays faithful and small."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyq import quantize, testutil


def run(model_bytes, x):
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, {"features": x})[0]


@pytest.fixture
def mlp(tmp_path):
    path = tmp_path / "mlp.onnx"
    path.write_bytes(testutil.tiny_mlp(0, n_in=6, hidden=32))
    return path


def stale_value_info(path):
    """What torch.onnx.export can write: initialisers in value_info with static shapes, twice."""
    model = onnx.load(str(path))
    for t in model.graph.initializer:
        dims = [1] + list(t.dims[1:]) if len(t.dims) > 1 else [1]  # a stale, wrong shape
        vi = helper.make_tensor_value_info(t.name, TensorProto.FLOAT, dims)
        model.graph.value_info.extend([vi, vi])
    onnx.save(model, str(path))


def test_stale_value_info_breaks_plain_ort_and_is_repaired(mlp, tmp_path):
    stale_value_info(mlp)
    from onnxruntime.quantization import quantize_dynamic

    with pytest.raises(Exception, match="(?i)shape"):
        quantize_dynamic(str(mlp), str(tmp_path / "plain.onnx"))
    model, repairs = quantize.load_for_quantization(mlp)
    assert [r.code for r in repairs] == ["value_info_dropped"]
    assert "8 entries (8 naming initialisers, 4 duplicates)" in repairs[0].detail
    assert quantize.encode(model, "dynamic", per_channel=False).size > 0


def test_moved_external_data_is_repointed_and_inlined(mlp, tmp_path):
    model = onnx.load(str(mlp))
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save(model, str(ext / "old_name.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="old_name.onnx.data", size_threshold=0)
    (ext / "old_name.onnx").rename(ext / "renamed.onnx")
    (ext / "old_name.onnx.data").rename(ext / "renamed.onnx.data")
    with pytest.raises(Exception):
        ort.InferenceSession(str(ext / "renamed.onnx"), providers=["CPUExecutionProvider"])
    repaired, repairs = quantize.load_for_quantization(ext / "renamed.onnx")
    codes = [r.code for r in repairs]
    assert codes == ["external_data_location"] * 4 + ["external_data_inlined"]
    assert repairs[0].detail.endswith("old_name.onnx.data -> renamed.onnx.data")
    x = np.random.default_rng(1).random((5, 6), dtype=np.float32)
    np.testing.assert_allclose(run(repaired.SerializeToString(), x), run(mlp.read_bytes(), x), rtol=1e-6)


def test_missing_external_data_is_refused(mlp, tmp_path):
    onnx.save(onnx.load(str(mlp)), str(tmp_path / "m.onnx"), save_as_external_data=True, location="gone.bin", size_threshold=0)
    (tmp_path / "gone.bin").unlink()
    with pytest.raises(quantize.QuantizeError, match="names external data 'gone.bin'"):
        quantize.load_for_quantization(tmp_path / "m.onnx")


def test_fp16_model_is_refused_with_the_fix(tmp_path):
    w = numpy_helper.from_array(np.ones((6, 1), np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n", 1])], initializer=[w],
    )
    path = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(quantize.QuantizeError, match=r"fp16 model .* re-export the model in float32"):
        quantize.load_for_quantization(path)


@pytest.mark.parametrize("opset", [9, 22])
def test_unsupported_opset_is_refused(mlp, opset):
    model = onnx.load(str(mlp))
    model.opset_import[0].version = opset
    onnx.save(model, str(mlp))
    with pytest.raises(quantize.QuantizeError, match=f"opset {opset} is not supported.*opset_version=17"):
        quantize.load_for_quantization(mlp)


def test_garbage_is_refused(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"\x00not onnx")
    with pytest.raises(quantize.QuantizeError, match="not a readable ONNX model"):
        quantize.load_for_quantization(tmp_path / "x.onnx")


@pytest.mark.parametrize("encoding", ["weight_only", "dynamic"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_encodings_are_faithful_smaller_and_deterministic(mlp, encoding, per_channel):
    model, _ = quantize.load_for_quantization(mlp)
    enc = quantize.encode(model, encoding, per_channel)
    assert enc.encoding == encoding and enc.size < mlp.stat().st_size
    assert quantize.encode(model, encoding, per_channel).model_bytes == enc.model_bytes
    x = np.random.default_rng(2).standard_normal((256, 6)).astype(np.float32)
    a, b = run(mlp.read_bytes(), x).ravel(), run(enc.model_bytes, x).ravel()
    assert 1 - np.corrcoef(a, b)[0, 1] < 1e-3


def test_weight_only_uses_standard_dequantize_linear(mlp):
    model, _ = quantize.load_for_quantization(mlp)
    out = onnx.load_from_string(quantize.encode(model, "weight_only", True).model_bytes)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("DequantizeLinear") == 2 and "MatMulInteger" not in ops
    assert {d.domain for d in out.opset_import} <= {"", "ai.onnx"}
    assert all(t.data_type != TensorProto.FLOAT or t.dims in ([32], [1], [6]) or len(t.dims) <= 1 for t in out.graph.initializer)


def test_auto_keeps_the_smallest(mlp):
    model, _ = quantize.load_for_quantization(mlp)
    sizes = {e: quantize.encode(model, e, True).size for e in ("weight_only", "dynamic")}
    auto = quantize.encode(model, "auto", True)
    assert auto.size == min(sizes.values()) and sizes[auto.encoding] == auto.size


@pytest.mark.parametrize("encoding", ["weight_only", "dynamic"])
def test_encodings_load_with_precise_x64_int8_kernels(mlp, encoding):
    # Shared initialisers once broke onnxruntime's x64quantprecision transformer.
    model, _ = quantize.load_for_quantization(mlp)
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.x64quantprecision", "1")
    ort.InferenceSession(quantize.encode(model, encoding, False).model_bytes, opts, providers=["CPUExecutionProvider"])
