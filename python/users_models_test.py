"""Users' models, round 3, end to end as the user guide documents it: models beyond CNNs and MLPs,
built by this test (torch's legacy exporter, onnx.helper where a layout matters):

  transformer  a 2-layer transformer encoder (attention, LayerNorm, GELU): dynamic candidates tried;
  gru          a GRU regressor: its recurrent weights are counted, and stay fp32 with the reason;
  depthwise    a MobileNetV2-style CNN (depthwise, BatchNorm, ReLU6, Hardswish) fitted on digits;
  opset12      an MLP at opset 12: converted (onnx.version_converter), not refused;
  neg_inf      a -inf mask fed to Max and Add: a constant, not a weight;
  paddle       weights held in Constant nodes, as paddle2onnx writes them: quantised;
  if_branch    weights inside an If branch: counted as fp32, never "best drop 0".

Each goes register_model -> ptq_auto --id --output -> register_model --recipe -> measure_quant_drop
--id -> validate_registry. No step may exit 70 or print a traceback; ptq_auto ends with a choice
(exit 0) or an fp32 verdict (exit 6), and after either the gate step exits 0.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyq.io.fileio import atomic_write_npz
from tinyq_testing import testmodels, testutil

PY = Path.cwd() / "python"
NAMES = ["transformer", "gru", "depthwise", "opset12", "neg_inf", "paddle", "if_branch"]


def run(tool, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    r = subprocess.run([str(PY / tool), *map(str, args)], capture_output=True, text=True, env=env)
    assert "Traceback" not in r.stderr and r.returncode != 70, r.stderr[-3000:]
    return r


def _torch_models(d: Path, rng) -> dict:
    torch = testmodels._torch()
    nn = torch.nn
    torch.manual_seed(0)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(16, 32)
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu", batch_first=True)
            self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.out = nn.Linear(32, 1)

        def forward(self, x):
            return self.out(self.enc(self.inp(x)).mean(1))

    class Gru(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(4, 32, batch_first=True)
            self.out = nn.Linear(32, 1)

        def forward(self, x):
            return self.out(self.gru(x)[0][:, -1])

    seq = rng.standard_normal((400, 12, 16)).astype(np.float32)
    series = rng.standard_normal((400, 10, 4)).astype(np.float32)
    digits = testmodels.digits()
    out = {}
    for name, module, x in (("transformer", Encoder(), seq), ("gru", Gru(), series)):
        testmodels.export_torch(module.eval(), {"x": x[:2]}, ["y"], d / f"{name}.onnx", dynamo=False, dynamic_batch=True)
        out[name] = {"x": x}
    net = testmodels.mobilenet_digits(digits["train"], steps=60)
    testmodels.export_torch(net, {"x": digits["train"][0][:2]}, ["y"], d / "depthwise.onnx", dynamo=False, dynamic_batch=True)
    out["depthwise"] = {"x": np.concatenate([digits[s][0] for s in ("train", "val", "soak")])[:400]}
    return out


def _mlp_nodes(rng, w1_source="w1"):
    w1, w2 = rng.standard_normal((6, 64)).astype(np.float32), rng.standard_normal((64, 1)).astype(np.float32) / 8
    nodes = [helper.make_node("MatMul", ["x", w1_source], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    return nodes, w1, w2


def _onnx_models(d: Path, rng) -> dict:
    io = ([testutil.floats("x", ["n", 6])], [testutil.floats("y", ["n", 1])])
    nodes, w1, w2 = _mlp_nodes(rng)
    testutil.save_graph(d / "opset12.onnx", nodes, *io, [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
                        opset=12)
    nodes, w1, w2 = _mlp_nodes(rng)
    mask = np.zeros(64, np.float32)
    mask[::16] = -np.inf
    masked = [nodes[0], helper.make_node("Constant", [], ["floor"], value=numpy_helper.from_array(np.array(-np.inf, np.float32))),
              helper.make_node("Max", ["h", "floor"], ["m"]), helper.make_node("Add", ["m", "mask"], ["a"]),
              helper.make_node("Relu", ["a"], ["r"]), nodes[2]]
    testutil.save_graph(d / "neg_inf.onnx", masked, *io, [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
                                                         numpy_helper.from_array(mask, "mask")])
    nodes, w1, w2 = _mlp_nodes(rng)
    consts = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(a)) for n, a in (("w1", w1), ("w2", w2))]
    testutil.save_graph(d / "paddle.onnx", consts + nodes, *io)
    onnx.save(testutil.if_model(rng.standard_normal((64, 1)), rng.standard_normal((64, 1)), top_w=rng.standard_normal((6, 64))),
              str(d / "if_branch.onnx"))
    xs = rng.standard_normal((400, 6)).astype(np.float32)
    return {name: {"x" if name != "if_branch" else "features": xs} for name in ("opset12", "neg_inf", "paddle", "if_branch")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Each model with train / val / soak splits; targets are its own fp32 outputs."""
    import onnxruntime as ort

    home = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    inputs = {**_torch_models(home, rng), **_onnx_models(home, rng)}
    for name, arrays in inputs.items():
        sess = ort.InferenceSession(str(home / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        (key, x), = arrays.items()
        y = sess.run(None, {key: x})[0].reshape(len(x), -1)[:, 0]
        for split, rows in (("train", slice(0, 200)), ("val", slice(200, 300)), ("soak", slice(300, 400))):
            data = {key: x[rows]} if split == "train" else {key: x[rows], "target": y[rows].astype(np.float32)}
            atomic_write_npz(home / f"{name}.{split}.npz", data)
    reg = tmp_path_factory.mktemp("registry") / "registry.json"
    return home, reg


@pytest.fixture(scope="module")
def journeys(workspace):
    """Every model through the documented path; {name: {step: CompletedProcess}}."""
    home, reg = workspace
    out = {}
    for name in NAMES:
        steps = out[name] = {}
        steps["register"] = run("register_model", home / f"{name}.onnx", "--registry", reg, "--kind", "regressor",
                                "--calibration-data", home / f"{name}.train.npz", "--validation-data",
                                home / f"{name}.val.npz", "--soak-data", home / f"{name}.soak.npz", "--budget", "0.02")
        artefact = reg.parent / f"{name}.int8.onnx"
        steps["auto"] = run("ptq_auto", "--id", name, "--registry", reg, "--output", artefact, "--max-minutes", "0.5")
        recipe = reg.parent / f"{name}.int8.recipe.json"
        steps["pin"] = run("register_model", reg.parent / f"{name}.onnx", "--registry", reg, "--recipe", recipe)
        steps["gate"] = run("measure_quant_drop", "--registry", reg, "--id", name, "--nolatency")
        steps["report"] = json.loads((reg.parent / f"{name}.int8.auto.json").read_text())
    out["validate"] = run("validate_registry", reg)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_step_of_the_documented_path_passes(journeys, name):
    steps = journeys[name]
    assert steps["register"].returncode == 0, steps["register"].stderr[-2000:]
    assert steps["auto"].returncode in (0, 6), steps["auto"].stderr[-2000:]
    assert "best drop 0)" not in steps["auto"].stderr and "best drop 0.00" not in steps["auto"].stderr
    assert steps["pin"].returncode == 0, steps["pin"].stderr[-2000:]
    assert steps["gate"].returncode == 0, steps["gate"].stdout[-2000:] + steps["gate"].stderr[-2000:]
    if steps["auto"].returncode == 6:
        assert "the verdict is fp32" in steps["gate"].stdout


def test_the_registry_validates_after_all_of_them(journeys):
    assert journeys["validate"].returncode == 0, journeys["validate"].stdout + journeys["validate"].stderr


def _candidates(journeys, name):
    return {c["candidate"]: c for c in journeys[name]["report"]["candidates"]}


def test_attention_gets_dynamic_candidates(journeys):
    rows = _candidates(journeys, "transformer")
    assert {"dynamic_pt", "dynamic_pc"} <= set(rows)
    assert not (rows["dynamic_pc"]["why_over_budget"] or "").startswith(("failed", "skipped")), rows["dynamic_pc"]


def test_an_old_opset_and_a_minus_inf_mask_are_quantised_not_refused(journeys):
    for name in ("opset12", "neg_inf"):
        rows = _candidates(journeys, name)
        assert rows["weight_only"]["within_budget"] or "quantises no weight" not in (rows["weight_only"]["why_over_budget"] or "")
        assert any(r["within_budget"] for r in rows.values()), name


def test_weights_in_constant_nodes_are_quantised(journeys):
    wo = _candidates(journeys, "paddle")["weight_only"]
    assert "quantises no weight" not in (wo["why_over_budget"] or ""), wo


def _weight_only_coverage(home, name, tmp_path):
    """ptq_dynamic --encoding weight_only's report on one model: its weights section."""
    report = tmp_path / f"{name}.json"
    r = run("ptq_dynamic", home / f"{name}.onnx", "--encoding", "weight_only", "--output", tmp_path / f"{name}.int8.onnx",
            "--report-out", report)
    assert r.returncode == 0, r.stderr
    return json.loads(report.read_text())["weights"]


def test_recurrent_weights_are_counted_as_fp32_with_the_reason(workspace, tmp_path):
    left = {x["op"]: x for x in _weight_only_coverage(workspace[0], "gru", tmp_path)["ops_left_fp32"]}
    assert "GRU" in left and "no tinyq encoding quantises GRU weights" in left["GRU"]["reason"]


def test_weights_in_an_if_branch_are_reported_not_hidden(workspace, tmp_path):
    weights = _weight_only_coverage(workspace[0], "if_branch", tmp_path)
    assert weights["weights_quantised_fraction"] < 1
    assert any("If/Loop/Scan subgraph" in x["reason"] for x in weights["ops_left_fp32"]), weights
