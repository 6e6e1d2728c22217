"""The two int8 arithmetics, the pair bound and its fix, on a model built to saturate on AVX2.

The model's first layer is a bank of smooth positive 3x3 kernels (a blur): their int8 weights pair
up past 128, so bright inputs clip its int16 pair sums on AVX2. Every assertion here fails with its
fix removed: without the 7-bit re-encoding the fixed artefact saturates, and without the avx2 row
the gate passes the saturating one.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyq.judge import arithmetic, drops, gate
from tinyq.quant import overflow, quantize
from tinyq_testing import testutil

BUDGET = 1e-2


def _blur_bank() -> onnx.ModelProto:
    k = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32)
    w1 = np.stack([k / k.sum() * (0.5 + 0.1 * i) for i in range(16)])[:, None]
    w2 = np.full((1, 16, 1, 1), 1 / 16, np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="stem"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "blur", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, 16, 16])],
                              [numpy_helper.from_array(w1.astype(np.float32), "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def blur(tmp_path_factory):
    d = tmp_path_factory.mktemp("blur")
    rng = np.random.default_rng(0)
    model = _blur_bank()
    calibration = {"x": rng.uniform(0, 1, (64, 1, 16, 16)).astype(np.float32)}
    bright = {"x": rng.uniform(0.5, 1, (64, 1, 16, 16)).astype(np.float32)}
    onnx.save(model, str(d / "blur.onnx"))
    for fix in overflow.SCOPES:
        (d / f"{fix}.int8.onnx").write_bytes(quantize.quantize_static_qdq(model, calibration, overflow_fix=fix))
    (d / "weight_only.int8.onnx").write_bytes(quantize.encode(model, "weight_only", per_channel=True).model_bytes)
    return d, bright


def _drop(d: Path, name: str, feeds, which: str) -> float:
    ref = arithmetic.run(str(d / "blur.onnx"), feeds, "exact")[0]
    return drops.pearson_drop(ref.ravel(), arithmetic.run(str(d / name), feeds, which)[0].ravel())


def test_the_bound_finds_the_saturating_layers_and_the_fix_clears_them(blur):
    d, _ = blur
    unfixed = overflow.pair_bounds(onnx.load(str(d / "none.int8.onnx")))
    fixed = overflow.pair_bounds(onnx.load(str(d / "needed.int8.onnx")))
    seven = overflow.pair_bounds(onnx.load(str(d / "all.int8.onnx")))
    assert [b.op for b in unfixed if b.can_saturate] == ["Conv", "Conv"]
    assert unfixed[0].int16_range[1] > overflow.INT16_MAX
    assert not any(b.can_saturate for b in fixed) and all(b.max_pair <= overflow.PAIR_LIMIT for b in fixed)
    assert not any(b.can_saturate for b in seven) and all(b.seven_bit for b in seven)
    # "needed" keeps more of the int8 range than 7 bits: its largest weight passes 63
    assert all(b.max_pair > 126 for b in fixed)


def test_avx2_saturates_where_exact_does_not(blur):
    d, bright = blur
    exact, avx2 = _drop(d, "none.int8.onnx", bright, "exact"), _drop(d, "none.int8.onnx", bright, "avx2")
    assert exact < BUDGET < avx2, (exact, avx2)
    assert avx2 > 10 * exact


@pytest.mark.parametrize("fix", ["needed", "all"])
def test_the_fixed_artefact_is_the_same_in_both_arithmetics(blur, fix):
    d, bright = blur
    outs = [arithmetic.run(str(d / f"{fix}.int8.onnx"), bright, a)[0] for a in arithmetic.ARITHMETICS]
    assert np.allclose(outs[0], outs[1], atol=1e-6)
    assert _drop(d, f"{fix}.int8.onnx", bright, "avx2") < BUDGET


def _gate(d: Path, name: str, bright) -> gate.ModelResult:
    return gate.gate_model("blur", d / "blur.onnx", d / name, gate.Budgets(BUDGET), real=bright, real_label="data",
                           latency=False)


def test_the_gate_fails_the_saturating_artefact_on_its_avx2_row(blur):
    d, bright = blur
    r = _gate(d, "none.int8.onnx", bright)
    rows = r.set("data").isa
    assert set(rows) == {"exact", "avx2"}
    assert rows["exact"].passed and rows["exact"].drop < BUDGET
    assert not rows["avx2"].passed and rows["avx2"].drop > BUDGET
    assert not r.passed
    assert r.overflow["can_saturate"] == 2


def test_the_gate_passes_the_fixed_artefact_on_every_row(blur):
    d, bright = blur
    r = _gate(d, "needed.int8.onnx", bright)
    assert r.passed
    assert all(row.passed and row.drop < BUDGET for row in r.set("data").isa.values())
    assert r.overflow["can_saturate"] == 0


def test_a_padded_channel_never_creates_a_saturating_pair():
    rng = np.random.default_rng(1)
    model = _blur_bank()
    calibration = {"x": rng.uniform(0, 1, (32, 1, 16, 16)).astype(np.float32)}
    padded = quantize.quantize_static_qdq(model, calibration, rewrites=["pad_conv_inputs", "pad_conv_outputs"])
    assert not any(b.can_saturate for b in overflow.pair_bounds(onnx.load_from_string(padded)))


def test_dynamic_encoding_is_fixed_too():
    rng = np.random.default_rng(2)
    w = np.abs(rng.normal(1, 0.1, (32, 8))).astype(np.float32)  # all positive: every pair adds past 128
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.uniform(0, 1, (64, 32)).astype(np.float32)}
    unfixed = quantize.encode(model, "dynamic", False, "none").model_bytes
    fixed = quantize.encode(model, "dynamic", False, "needed").model_bytes
    assert [b.can_saturate for b in overflow.pair_bounds(onnx.load_from_string(unfixed))] == [True]
    assert [b.can_saturate for b in overflow.pair_bounds(onnx.load_from_string(fixed))] == [False]
    ref = arithmetic.run(model.SerializeToString(), feeds, "exact")[0]
    out = arithmetic.run(fixed, feeds, "avx2")[0]
    assert drops.pearson_drop(ref.ravel(), out.ravel()) < 1e-3


_CPUINFO = {
    "vnni": ("AMD EPYC 9R14", "fpu sse4_1 avx2 avx512f avx512bw avx512_vnni", "exact", "avx512_vnni"),
    "avx2": ("AMD EPYC 7R13 Processor", "fpu sse4_1 fma avx2", "avx2", "avx2 (no VNNI)"),
    "skylake": ("Intel(R) Xeon(R) Platinum 8175M", "fpu sse4_1 avx2 avx512f avx512bw", "avx2", "avx512bw (no VNNI)"),
    "alderlake": ("12th Gen Intel(R) Core(TM) i7-12700", "fpu sse4_1 avx2 avx_vnni", "exact", "avx_vnni"),
    "nehalem": ("Intel(R) Xeon(R) CPU X5570", "fpu sse4_1 sse4_2", "exact", "sse4.1"),
}


@pytest.mark.parametrize("name", sorted(_CPUINFO))
def test_cpu_arithmetic_from_cpuinfo(tmp_path, name, monkeypatch):
    model, flags, native, isa = _CPUINFO[name]
    monkeypatch.setattr(arithmetic.platform, "machine", lambda: "x86_64")
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: {model}\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    cpu = arithmetic.host_cpu(str(path), cpuid=None)
    assert (cpu.model, cpu.native, cpu.int8_isa) == (model, native, isa)
    # CPUID disagreeing with /proc/cpuinfo (qemu-user shows the host's file): CPUID wins
    emulated = arithmetic.host_cpu(str(path), cpuid=frozenset({"sse4_1", "avx2", "fma"}))
    assert (emulated.native, emulated.int8_isa) == ("avx2", "avx2 (no VNNI)")
    assert arithmetic.how("exact", cpu) == ("native" if native == "exact" else "session option")
    assert arithmetic.how("avx2", cpu) == ("native" if native == "avx2" else "emulated")


@pytest.mark.skipif(arithmetic.host_cpu().native != "avx2",
                    reason="needs a CPU whose native int8 arithmetic is avx2 (AVX2 or AVX-512 without VNNI); "
                           f"this one is {arithmetic.host_cpu().int8_isa}")
def test_emulated_avx2_equals_native_avx2(blur):
    d, bright = blur
    native = arithmetic.run(str(d / "none.int8.onnx"), bright, "avx2")[0]
    emulated = arithmetic._run_emulated(str(d / "none.int8.onnx"), bright)[0]
    assert np.array_equal(native, emulated)


_GATE_ON_AVX2 = """
import json, sys
from pathlib import Path
import numpy as np
from tinyq.judge import gate
d, out = Path(sys.argv[1]), {}
with np.load(d / "bright.npz") as f:
    bright = {"x": f["x"]}
for name in ("none", "needed", "weight_only"):
    r = gate.gate_model("blur", d / "blur.onnx", d / f"{name}.int8.onnx", gate.Budgets(float(sys.argv[2])), real=bright,
                        real_label="data", latency=False)
    out[name] = {"passed": r.passed, "cpu": r.cpu, "rows": {a: row.__dict__ for a, row in r.set("data").isa.items()}}
print(json.dumps(out))
"""


@pytest.mark.skipif(arithmetic.host_cpu().machine != "x86_64", reason="qemu-x86_64 emulates an x86-64 CPU on x86-64 hosts")
def test_the_gate_on_an_avx2_cpu_judges_the_same(blur):
    """The whole gate run on an AVX2 CPU (qemu's Haswell): avx2 is native there and exact comes from
    the session option, and both rows agree with this machine's."""
    import json
    import os
    import subprocess
    import sys

    d, bright = blur
    np.savez(d / "bright.npz", **bright)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([arithmetic.qemu(), "-cpu", arithmetic.EMULATED_CPU, sys.executable, "-c", _GATE_ON_AVX2,
                           str(d), str(BUDGET)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert there["none"]["cpu"]["arithmetic"] == "avx2"
    rows = there["none"]["rows"]
    assert rows["avx2"]["how"].startswith("native") and rows["exact"]["how"].startswith("session option")
    assert not there["none"]["passed"] and there["needed"]["passed"]
    # No u8 x s8 kernel: exact is native there too (onnxruntime's session option breaks per-channel
    # weight-only DequantizeLinear on AVX2: "x_zero_point must be null or 1D tensor with size ...").
    assert there["weight_only"]["passed"] and there["weight_only"]["rows"]["exact"]["how"].startswith("native")
    here = _gate(d, "none.int8.onnx", bright).set("data").isa
    for a in arithmetic.ARITHMETICS:
        assert rows[a]["drop"] == pytest.approx(here[a].drop, rel=1e-6), a


@pytest.mark.parametrize("encoding", ["weight_only", "dynamic"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_data_free_encodings_are_faithful_in_both_arithmetics(tmp_path, encoding, per_channel):
    """Faithful as every CPU computes it, not just this one."""
    path = tmp_path / "mlp.onnx"
    path.write_bytes(testutil.tiny_mlp(0, n_in=6, hidden=32))
    model, _ = quantize.load_for_quantization(path)
    enc = quantize.encode(model, encoding, per_channel)
    x = np.random.default_rng(2).standard_normal((256, 6)).astype(np.float32)
    a = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"features": x})[0].ravel()
    for which in arithmetic.ARITHMETICS:
        b = arithmetic.run(enc.model_bytes, {"features": x}, which)[0].ravel()
        assert 1 - np.corrcoef(a, b)[0, 1] < 1e-3, which

