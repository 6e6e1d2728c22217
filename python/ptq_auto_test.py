"""//python:ptq_auto: fp32 fallback for regions with no int8 kernel, an unreachable budget, and
the soak fixture held out from selection."""

import hashlib
import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyq_testing import testutil

TOOL = Path.cwd() / "python" / "ptq_auto"
STATIC = Path.cwd() / "python" / "ptq_static"
SIZE = 24  # image side: large enough for int8 kernels to beat fp32


def run(*args, env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    return subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, env={**base, **(env or {})})


def mscn_cnn(path: Path) -> Path:
    """luma -> [luma, MSCN(luma)] -> Conv-Relu-Conv-Relu -> mean -> score. The MSCN block (local
    mean, x - mu, its square, local variance, sqrt, division) has Sub, Pow, Sqrt and Div, which
    have no int8 kernel; quantising the pools and adds inside it wrecks the normalisation."""
    rng = np.random.default_rng(0)
    c = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)
    pool = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)
    nodes = [
        helper.make_node("AveragePool", ["x"], ["mu"], name="mu", **pool),
        helper.make_node("Sub", ["x", "mu"], ["d"], name="d"),
        helper.make_node("Pow", ["d", "two"], ["d2"], name="d2"),
        helper.make_node("AveragePool", ["d2"], ["var"], name="var", **pool),
        helper.make_node("Add", ["var", "eps"], ["var_eps"], name="var_eps"),
        helper.make_node("Sqrt", ["var_eps"], ["sigma"], name="sigma"),
        helper.make_node("Div", ["d", "sigma"], ["mscn"], name="mscn"),
        helper.make_node("Concat", ["x", "mscn"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("ReduceMean", ["r2"], ["m"], name="pool", axes=[1, 2, 3], keepdims=0),
    ]
    inits = [c("two", 2.0), c("eps", 1e-6), c("w0", rng.standard_normal((16, 2, 3, 3)) * 0.4), c("b0", np.zeros(16)),
             c("w1", rng.standard_normal((32, 16, 3, 3)) * 0.1), c("b1", np.zeros(32)),
             c("w2", rng.standard_normal((32, 32, 3, 3)) * 0.07), c("b2", np.zeros(32))]
    graph = helper.make_graph(nodes, "mscn_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, SIZE, SIZE])],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, ["n"])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def images(n, seed):
    """Smooth luma with one sharp edge and faint noise: the local variance spans orders of
    magnitude, which an 8-bit range for it cannot hold (what makes MSCN's division fragile)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = []
    for f, g, edge in rng.random((n, 3)):
        img = 0.4 + 0.1 * np.sin(2 * np.pi * (f * xx + g * yy)) + 0.4 * (xx > 0.25 + 0.5 * edge)
        out.append(img + 0.002 * rng.standard_normal(img.shape))
    return np.stack(out).astype(np.float32)[:, None]


def search(tmp_path, budget):
    """ptq_auto --output on the MSCN CNN with its own train and val data: (fp32, calibration, out dir,
    result); the report and recipe go beside the artefact, m.int8.auto.json and m.int8.recipe.json."""
    fp32 = mscn_cnn(tmp_path / "mscn.onnx")
    np.savez(tmp_path / "cal.npz", x=images(64, 0))
    np.savez(tmp_path / "val.npz", x=images(96, 1))
    out = tmp_path / "out"
    out.mkdir()
    r = run("--fp32", fp32, "--calibration", tmp_path / "cal.npz", "--validation", tmp_path / "val.npz", "--budget", budget,
            "--output", out / "m.int8.onnx", "--plot-out", out / "p.png")
    return fp32, tmp_path / "cal.npz", out, r


def rebuild(fp32, cal, out, args):
    """ptq_static with a recipe's args: the artefact's sha256, as //model:<id>_int8 would build it."""
    r = subprocess.run([str(STATIC), fp32, "--calibration", cal, "--output", out / "rebuilt.int8.onnx", *args],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return hashlib.sha256((out / "rebuilt.int8.onnx").read_bytes()).hexdigest()


def row_args(row):
    """ptq_static's flags for a candidate row of the report."""
    args = [f"--calibrate-method={row['calibration']}", "--per-channel" if row["per_channel"] else "--noper-channel"]
    if row["fp32_nodes"]:
        args.append("--fp32-nodes=" + ",".join(row["fp32_nodes"]))
    if row["rewrites"]:
        args.append("--rewrite=" + ",".join(row["rewrites"]))
    return args


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search within a reachable budget, shared by the tests that read its outputs."""
    return search(tmp_path_factory.mktemp("searched"), "0.02")


def test_region_without_int8_kernels_goes_back_to_fp32(searched):
    fp32, cal, out, r = searched
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "m.int8.auto.json").read_text())
    groups = {g["name"]: g for g in report["fallback_groups"]}
    mscn = next(g for g in groups.values() if "mscn" in g["nodes"])
    assert {"mu", "var", "var_eps"} <= set(mscn["quantizable"]), mscn
    rows = {row["candidate"]: row for row in report["candidates"]}
    assert rows["qdq_minmax_pt"]["within_budget"] is False  # all-int8 breaks the normalisation
    recipe = json.loads((out / "m.int8.recipe.json").read_text())
    assert recipe["mode"] == "static" and recipe["purpose"] == "speed", recipe
    fp32_nodes = next(a for a in recipe["args"] if a.startswith("--fp32-nodes=")).split("=", 1)[1].split(",")
    assert {"mu", "var", "var_eps"} <= set(fp32_nodes)
    assert report["run_provenance"]["tool"]["name"] == "ptq_auto"
    # --output wrote the chosen candidate, and the recipe rebuilds it byte for byte, as //model:<id>_int8 does.
    chosen = rows[report["choice"]["candidate"]]
    assert hashlib.sha256((out / "m.int8.onnx").read_bytes()).hexdigest() == chosen["int8_sha256"]
    assert rebuild(fp32, cal, out, recipe["args"]) == chosen["int8_sha256"]
    assert (out / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| candidate | bytes |" in r.stdout and "choice: " in r.stdout


def test_rewrites_are_tried_on_candidates_off_the_fused_path(searched):
    """conv0 reads 2 channels (off the fused int8 path): the candidates within budget are tried
    again with pad_conv_inputs, which changes no drop, puts every QLinearConv on the fused path,
    and rebuilds byte for byte from its flags."""
    fp32, cal, out, r = searched
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {row["candidate"]: row for row in json.loads((out / "m.int8.auto.json").read_text())["candidates"]}
    padded = [row for name, row in rows.items() if name.endswith("+pad_conv_inputs")]
    assert padded, sorted(rows)
    for row in padded:
        base = rows[row["candidate"].removesuffix("+pad_conv_inputs")]
        assert any("input channels" in m for k in base["conv_kernels"] for m in k["misses"])
        assert all(k["fused_path"] for k in row["conv_kernels"]), row["conv_kernels"]
        assert row["validation_drop"] == base["validation_drop"]
    assert rebuild(fp32, cal, out, row_args(padded[0])) == padded[0]["int8_sha256"]


def test_unreachable_budget_exits_6_with_an_fp32_verdict_and_no_artefact(tmp_path):
    _, _, out, r = search(tmp_path, "0")
    assert r.returncode == 6, r.stdout[-2000:] + r.stderr[-2000:]
    assert "no candidate is within budget 0 on the validation set (best drop" in r.stderr
    # No QAT config exists for this model: QAT is not advised, keeping it fp32 is.
    assert "//python:qat_train --" not in r.stderr and "python/configs/mscn_qat.yaml does not exist" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["m.int8.auto.json", "m.int8.recipe.json", "p.png"]
    report = json.loads((out / "m.int8.auto.json").read_text())
    assert report["choice"]["candidate"] is None and report["choice"]["mode"] == "fp32"
    assert report["choice"]["reason"].startswith("no candidate is within budget 0")


def test_a_model_whose_weights_no_encoding_reaches_says_where_they_are(tmp_path):
    """Weights only inside If branches: every candidate quantises nothing, and the verdict says why
    instead of 'best drop 0'."""
    rng = np.random.default_rng(0)
    model = testutil.if_model(rng.standard_normal((6, 32)), rng.standard_normal((6, 32)))
    onnx.save(model, str(tmp_path / "if.onnx"))
    np.savez(tmp_path / "cal.npz", features=rng.standard_normal((64, 6)).astype(np.float32))
    np.savez(tmp_path / "val.npz", features=rng.standard_normal((64, 6)).astype(np.float32))
    r = run("--fp32", tmp_path / "if.onnx", "--calibration", tmp_path / "cal.npz", "--validation", tmp_path / "val.npz",
            "--report-out", tmp_path / "r.json")
    assert r.returncode == 6, r.stdout[-2000:] + r.stderr[-2000:]
    assert "no candidate quantises a weight, so there is no int8 to ship: 2 MatMul (384 elements)" in r.stderr, r.stderr
    assert "best drop" not in r.stderr and "| quantises no weight |" in r.stdout
    assert json.loads((tmp_path / "r.json").read_text())["choice"]["mode"] == "fp32"


def test_soak_fixture_is_never_read_during_selection(tmp_path):
    """Every file the tool opens is logged by an audit hook; the soak fixture is not among them,
    while the validation set is (the hook works)."""
    hook = tmp_path / "hook"
    hook.mkdir()
    log = tmp_path / "opened.txt"
    (hook / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import atexit, sys
        _opened = []
        def _log(event, args):
            if event == "open" and isinstance(args[0], (str, bytes)):
                _opened.append(str(args[0]))
        def _dump():
            with open({str(log)!r}, "a") as f:
                f.write("\\n".join(_opened) + "\\n")
        sys.addaudithook(_log)
        atexit.register(_dump)
    """))
    pythonpath = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    r = run("--id", "vmaf_tiny_v2", env={"PYTHONPATH": pythonpath})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    opened = log.read_text().splitlines()
    assert any(p.endswith("validation/vmaf_tiny_v2.val.npz") for p in opened)
    assert not [p for p in opened if "fixtures" in p or p.endswith(".soak.npz")]


def test_a_soak_fixture_passed_as_a_choice_set_is_refused():
    fixture = Path("model/tiny/fixtures/vmaf_tiny_v2.soak.npz").resolve()
    for flag in ("--validation", "--calibration"):
        r = run("--id", "vmaf_tiny_v2", flag, fixture)
        assert r.returncode == 2, r.stderr[-2000:]
        assert f"{flag} {fixture} is the soak fixture" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_exit_2(tmp_path):
    assert run().returncode == 2
    for flag in ("--budget", "--shift-budget", "--task-budget"):  # NaN passes absl's bounds checks
        r = run("--id", "vmaf_tiny_v2", flag, "nan")
        assert r.returncode == 2 and "must be a finite number" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert run("--fp32", tmp_path / "a.onnx").returncode == 2
    assert run("--id", "no_such_model").returncode == 2
    # --output's report would land on the validation set: refused before any work, naming where it comes from.
    fp32 = mscn_cnn(tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", x=images(16, 0))
    with open(tmp_path / "m.int8.auto.json", "wb") as f:  # an .npz under a report's name
        np.savez(f, x=images(16, 1))
    r = run("--fp32", fp32, "--calibration", tmp_path / "cal.npz", "--validation", tmp_path / "m.int8.auto.json",
            "--output", tmp_path / "m.int8.onnx")
    assert r.returncode == 9 and "--report-out (by default beside --output)" in r.stderr, r.stderr
    assert not (tmp_path / "m.int8.onnx").exists()
