"""//python:measure_quant_drop fails when it should: over budget, NaN, missing files, open shapes."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tinyq.quant import quantize
from tinyq_testing import testutil

TOOL = Path.cwd() / "python" / "measure_quant_drop"
TINY = Path.cwd() / "model" / "tiny"


def run(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    return subprocess.run([str(TOOL), "--nolatency", *map(str, args)], capture_output=True, text=True, env=env)


def test_shipped_models_pass_with_reports(tmp_path):
    r = run("--id", "vmaf_tiny_v3", "--out-json", tmp_path / "g.json", "--out-md", tmp_path / "g.md")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["gate_pass"] is True and report["run_provenance"]["tool"]["name"] == "measure_quant_drop"
    row = report["models"][0]
    assert [s["input_set"] for s in row["sets"]] == ["soak", "shift", "synthetic"]
    assert [s["samples"] for s in row["sets"]] == [768, 504, 16]
    assert row["sets"][1]["budget"] == 0.1 and row["sets"][1]["pass"] is True
    assert row["task"]["fp32"]["plcc"] > 0.999 and row["task"]["int8"]["plcc"] > 0.999
    assert "| vmaf_tiny_v3 | soak | 768 |" in (tmp_path / "g.md").read_text()
    assert (tmp_path / "vmaf_tiny_v3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_perturbed_int8_weights_fail_the_budget(tmp_path):
    model, _ = quantize.load_for_quantization(TINY / "vmaf_tiny_v3.onnx")
    int8 = onnx.load_from_string(quantize.encode(model, "weight_only", False).model_bytes)
    rng = np.random.default_rng(0)
    for t in int8.graph.initializer:
        if t.data_type == TensorProto.INT8:
            w = numpy_helper.to_array(t).astype(np.int32)
            t.CopyFrom(numpy_helper.from_array(np.clip(w + rng.integers(-60, 61, w.shape), -127, 127).astype(np.int8), t.name))
    path = tmp_path / "perturbed.int8.onnx"
    onnx.save(int8, str(path))
    r = run("--id", "vmaf_tiny_v3", "--int8", path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "[FAIL] vmaf_tiny_v3" in r.stdout and "> budget 0.01" in r.stdout


def _mlp_pair(tmp_path, bias):
    """An MLP and its weight-only int8, whose last bias (still fp32) is set to bias."""
    fp32 = tmp_path / "m.onnx"
    fp32.write_bytes(testutil.tiny_mlp(0))
    model, _ = quantize.load_for_quantization(fp32)
    int8 = onnx.load_from_string(quantize.encode(model, "weight_only", False).model_bytes)
    b1 = [t for t in int8.graph.initializer if t.data_type == TensorProto.FLOAT and list(t.dims) == [1]]
    assert len(b1) == 1, "the last bias is the one [1]-shaped float initialiser (per-tensor scales are scalars)"
    b1[0].CopyFrom(numpy_helper.from_array(np.array([bias], np.float32), b1[0].name))
    path = tmp_path / "m.int8.onnx"
    onnx.save(int8, str(path))
    return fp32, path


def test_nan_output_fails_the_model(tmp_path):
    fp32, int8 = _mlp_pair(tmp_path, np.nan)
    r = run("--fp32", fp32, "--int8", int8)
    assert r.returncode == 1
    assert "int8 output 'score' has 16 NaN or infinite values" in r.stdout


def _weight_only(tmp_path, model_id):
    """A weight-only int8 of a zoo CNN: close to its fp32 on any input, noise included."""
    model, _ = quantize.load_for_quantization(TINY / f"{model_id}.onnx")
    path = tmp_path / f"{model_id}.wo.int8.onnx"
    path.write_bytes(quantize.encode(model, "weight_only", False).model_bytes)
    return ["--fp32", TINY / f"{model_id}.onnx", "--int8", path]


def test_two_input_model_with_dynamic_spatial_dims(tmp_path):
    # From the registry: shapes come from the soak fixture (48x48), never forced to 1.
    assert run("--id", "fr_patch_v1").returncode == 0
    # As a foreign pair: both inputs need their spatial size.
    pair = _weight_only(tmp_path, "fr_patch_v1")
    r = run(*pair)
    assert r.returncode == 2 and "input 'ref' has a dynamic dimension" in r.stderr and "--input-shape ref=" in r.stderr
    r = run(*pair, "--input-shape", "ref=16,1,40,56", "--input-shape", "dist=16,1,40,56", "--out-json", tmp_path / "g.json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "g.json").read_text())["models"][0]["sets"][0]["samples"] == 16


def test_static_qdq_pair_is_judged_on_real_data_not_noise(tmp_path):
    """The zoo's static int8 fr_patch_v1 saturates on uniform noise (calibrated on real patches):
    judged on noise alone it fails, and says so; on real data (--data) it passes."""
    pair = ["--fp32", TINY / "fr_patch_v1.onnx", "--int8", TINY / "fr_patch_v1.int8.onnx"]
    r = run(*pair, "--input-shape", "ref=16,1,48,48", "--input-shape", "dist=16,1,48,48")
    assert r.returncode == 1 and "SYNTHETIC DATA ONLY" in r.stdout
    r = run(*pair, "--data", TINY / "fixtures" / "fr_patch_v1.soak.npz")
    assert r.returncode == 0 and "on the --data set" in r.stdout, r.stdout + r.stderr


def test_foreign_model_needs_input_shape(tmp_path):
    pair = _weight_only(tmp_path, "nr_metric_v1")
    r = run(*pair)
    assert r.returncode == 2 and "pass --data X.npz (real inputs) or --input-shape dist=<d0,d1,...>" in r.stderr
    assert run(*pair, "--input-shape", "dist=16,1,64,48").returncode == 0
    r = run(*pair, "--input-shape", "dist=16,3,64,48")
    assert r.returncode == 2 and "does not fit the input's declared shape" in r.stderr
    assert run(*pair, "--input-shape", "dist=16,x").returncode == 2


def test_missing_int8_exits_2_naming_the_file_and_the_next_step(tmp_path):
    r = run("--id", "vmaf_tiny_v2", "--int8", tmp_path / "none.onnx")
    assert r.returncode == 2 and f"--int8 {tmp_path / 'none.onnx'} does not exist" in r.stderr, r.stderr
    assert "register_model --recipe R.recipe.json, after which measure_quant_drop --id vmaf_tiny_v2" in r.stderr


def test_an_fp32_verdict_has_nothing_to_gate_and_passes(tmp_path):
    """After ptq_auto's fp32 verdict is pinned, the documented gate step says so and exits 0."""
    reg = testutil.make_tree(tmp_path)
    r = run("--registry", reg, "--id", "m_fp32")
    assert r.returncode == 0, r.stderr
    assert f"m_fp32 is fp32 in {reg} (quant_mode fp32): there is no int8 to gate; the verdict is fp32" in r.stdout


def test_unloadable_int8_exits_2(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    r = run("--id", "vmaf_tiny_v2", "--int8", bad)
    assert r.returncode == 2 and f"{bad}: not an ONNX model" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _constant_pair(tmp_path, c8):
    """y = x @ 0 + c: fp32 with c = 0.5, and an int8 whose c (c8) is stored as int8 behind a DequantizeLinear."""
    def model(c, name, quantised):
        nodes = [helper.make_node("MatMul", ["x", "zero"], ["z"]), helper.make_node("Add", ["z", "c"], ["y"])]
        inits = [numpy_helper.from_array(np.zeros((2, 3), np.float32), "zero")]
        if quantised:
            nodes.insert(0, helper.make_node("DequantizeLinear", ["c_q", "c_scale"], ["c"]))
            inits += [numpy_helper.from_array(np.full(3, round(c / 0.01), np.int8), "c_q"),
                      numpy_helper.from_array(np.array(0.01, np.float32), "c_scale")]
        else:
            inits.append(numpy_helper.from_array(np.full(3, c, np.float32), "c"))
        graph = helper.make_graph(nodes, "const", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], initializer=inits)
        path = tmp_path / name
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    return model(0.5, "c.onnx", False), model(c8, "c.int8.onnx", True)


def test_constant_output_is_judged_by_delta_relative_to_its_scale(tmp_path):
    fp32, int8 = _constant_pair(tmp_path, 0.5)
    r = run("--fp32", fp32, "--int8", int8, "--out-json", tmp_path / "g.json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads((tmp_path / "g.json").read_text())["models"][0]["sets"][0]["outputs"][0]
    assert out["constant"] is True and out["drop"] is None and "Pearson r undefined" in out["reason"]
    fp32, int8 = _constant_pair(tmp_path, 0.6)
    r = run("--fp32", fp32, "--int8", int8)
    assert r.returncode == 1 and "constant fp32 output" in r.stdout and "> tolerance 0.0005" in r.stdout


@pytest.mark.parametrize("args", [["--fp32", "a.onnx"], ["--all", "--id", "x"], [], ["--all", "--int8", "b.onnx"]])
def test_usage_errors_exit_2(args):
    assert run(*args).returncode == 2


def _one_model_registry(tmp_path, model_id, **fields):
    """A registry tree holding one zoo model (its files copied), with extra entry fields."""
    import shutil

    tiny = tmp_path / "tiny"
    (tiny / "fixtures").mkdir(parents=True)
    for name in (f"{model_id}.onnx", f"{model_id}.int8.onnx", f"{model_id}.json", "registry.schema.json", "sidecar.schema.json"):
        shutil.copy(TINY / name, tiny / name)
    shutil.copy(TINY / "fixtures" / f"{model_id}.soak.npz", tiny / "fixtures")
    data = json.loads((TINY / "registry.json").read_text())
    data["models"] = [{**m, **fields} for m in data["models"] if m["id"] == model_id]
    (tiny / "registry.json").write_text(json.dumps(data))
    return tiny / "registry.json"


def test_registry_synthetic_budget_judges_the_stress_set(tmp_path):
    reg = _one_model_registry(tmp_path, "vmaf_tiny_v3")
    r = run("--id", "vmaf_tiny_v3", "--registry", reg, "--out-json", tmp_path / "a.json")
    assert r.returncode == 0, r.stdout + r.stderr
    sets = json.loads((tmp_path / "a.json").read_text())["models"][0]["sets"]
    assert [(s["input_set"], s["budget"]) for s in sets] == [("soak", 0.01), ("synthetic", None)]
    reg = _one_model_registry(tmp_path / "b", "vmaf_tiny_v3", quant_synthetic_budget_plcc=1e-9)
    r = run("--id", "vmaf_tiny_v3", "--registry", reg)
    assert r.returncode == 1 and "synthetic output 'vmaf'" in r.stdout and "> budget 1e-09" in r.stdout


def test_an_fp32_that_is_not_onnx_is_named_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xfe")
    r = run("--fp32", bad, "--int8", TINY / "vmaf_tiny_v2.int8.onnx", "--data", TINY / "fixtures" / "vmaf_tiny_v2.soak.npz")
    assert r.returncode == 2 and f"{bad}: not an ONNX model" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_an_int8_that_quantises_nothing_is_refused(tmp_path):
    """An fp32 model passed as --int8 would pass with drop 0: the gate refuses to judge it."""
    fp32 = tmp_path / "m.onnx"
    fp32.write_bytes(testutil.tiny_mlp(0))
    copy = tmp_path / "m.int8.onnx"
    copy.write_bytes(fp32.read_bytes())
    r = run("--fp32", fp32, "--int8", copy)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{copy} quantises nothing" in r.stderr and "pass the int8 artefact" in r.stderr and "Traceback" not in r.stderr


def test_the_speed_gate_verdict_and_its_numbers_are_in_the_json(tmp_path):
    """The JSON holds the speed gate's own timings, exactly as printed, and its verdict (exit 7 when
    slower: whichever this CPU gives, the JSON and the exit code agree; nothing is timed here)."""
    import re

    r = run("--id", "fr_patch_v1", "--speed-gate", "--out-json", tmp_path / "g.json")
    assert r.returncode in (0, 7), r.stdout + r.stderr
    gate = json.loads((tmp_path / "g.json").read_text())["speed_gate"]
    verdict = gate["models"]["fr_patch_v1"]
    assert gate["run"] is True and gate["pass"] == verdict["pass"] == (r.returncode == 0)
    printed = re.findall(r"speed: batch (\d+): fp32 ([\d.]+) ms, int8 ([\d.]+) ms", r.stdout)
    assert [(b, f"{v['fp32_ms']:.3f}", f"{v['int8_ms']:.3f}") for b, v in verdict["batches"].items()] == printed
