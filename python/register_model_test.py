"""//python:register_model: a user's model becomes a valid registry entry with its sidecar, hashes and
real-data fixtures; bad input is refused with the fix and nothing written."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from tinyq.io.fileio import atomic_write_npz, sha256_file
from tinyq.registry import registry
from tinyq_testing import testutil

TOOL = Path.cwd() / "python" / "register_model"
PTQ_DYNAMIC = Path.cwd() / "python" / "ptq_dynamic"


def run(tool, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture
def user(tmp_path):
    """A model and real-shaped data outside an empty registry directory."""
    src = tmp_path / "mine" / "scorer.onnx"
    src.parent.mkdir()
    src.write_bytes(testutil.tiny_mlp(0, n_in=6, hidden=32))
    rng = np.random.default_rng(0)
    atomic_write_npz(src.parent / "calib.npz", {"features": rng.random((64, 6), dtype=np.float32)})
    atomic_write_npz(src.parent / "soak.npz", {"features": rng.random((32, 6), dtype=np.float32),
                                               "target": rng.random(32, dtype=np.float32)})
    reg = tmp_path / "reg" / "registry.json"
    reg.parent.mkdir()
    return src, reg


def register(src, reg, *args):
    return run(TOOL, src, "--registry", reg, *args)


def test_registers_a_new_model_with_sidecar_fixtures_and_hashes(user):
    src, reg = user
    r = register(src, reg, "--kind", "fr", "--calibration-data", src.parent / "calib.npz", "--soak-data",
                 src.parent / "soak.npz", "--input-semantics", "features=canonical-6 libvmaf features", "--budget", "0.02")
    assert r.returncode == 0, r.stderr
    assert "OK:" in r.stdout
    d = reg.parent
    entry = json.loads(reg.read_text())["models"][0]
    assert entry == {"id": "scorer", "kind": "fr", "onnx": "scorer.onnx", "opset": 17, "quant_mode": "fp32",
                     "sha256": sha256_file(d / "scorer.onnx"), "quant_calibration_set": "calibration/scorer.npz",
                     "quant_accuracy_budget_plcc": 0.02}
    side = json.loads((d / "scorer.json").read_text())
    assert side["id"] == "scorer" and side["input_names"] == ["features"] and side["input_shapes"] == [[-1, 6]]
    assert side["input_semantics"] == {"features": "canonical-6 libvmaf features"} and side["n_params"] == 6 * 32 + 32 + 32 + 1
    with np.load(d / "fixtures" / "scorer.soak.npz") as z:
        assert sorted(z.files) == ["features", "target"]
    with np.load(d / "calibration" / "scorer.npz") as z:
        assert z.files == ["features"]
    assert src.read_bytes() == (d / "scorer.onnx").read_bytes()
    assert registry.load(reg).get("scorer").quant_mode == "fp32"


def test_pins_the_int8_after_quantising_and_the_registry_validates(user):
    src, reg = user
    assert register(src, reg, "--kind", "nr", "--soak-data", src.parent / "soak.npz").returncode == 0
    fp32 = reg.parent / "scorer.onnx"
    assert run(PTQ_DYNAMIC, fp32).returncode == 0
    r = register(fp32, reg, "--quant-mode", "dynamic")
    assert r.returncode == 0, r.stderr
    assert "pinned without quant_encoding and quant_purpose" in r.stderr and "--recipe" in r.stderr  # no recipe: said
    m = registry.load(reg).get("scorer")
    assert m.quant_mode == "dynamic" and m.int8_sha256 == sha256_file(reg.parent / "scorer.int8.onnx")
    side = json.loads((reg.parent / "scorer.json").read_text())
    assert side["int8_sha256"] == m.int8_sha256 and side["quant_mode"] == "dynamic" and side["kind"] == "nr"


def test_reference_kinds_are_accepted(user):
    src, reg = user
    r = register(src, reg, "--kind", "shot_detector")
    assert r.returncode == 0, r.stderr
    assert json.loads(reg.read_text())["models"][0]["kind"] == "nr"  # the registry files it as the reference did
    assert json.loads((reg.parent / "scorer.json").read_text())["kind"] == "shot_detector"


def test_external_data_is_inlined_into_one_pinned_file(user, tmp_path):
    src, reg = user
    ext = tmp_path / "ext" / "big.onnx"
    ext.parent.mkdir()
    onnx.save(onnx.load(str(src)), str(ext), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    assert register(ext, reg, "--kind", "fr").returncode == 0
    pinned = onnx.load(str(reg.parent / "big.onnx"), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in pinned.graph.initializer)
    assert registry.check(reg)[1] == []


@pytest.mark.parametrize("args, message", [
    (["--kind", "fr", "--soak-data", "bad.npz"], "missing key 'features'"),
    (["--kind", "fr", "--calibration-data", "none.npz"], "file not found"),
    ([], "--kind is required"),
    (["--kind", "fr", "--id", "Bad Id"], "is not a registry id"),
    (["--kind", "fr", "--input-semantics", "nope=luma"], "has no input 'nope'"),
    (["--kind", "fr", "--quant-mode", "static"], "needs its calibration set"),
    (["--kind", "fr", "--quant-mode", "dynamic", "--calibration-data", "calib.npz"], "pass --soak-data"),
    (["--kind", "fr", "--registry", "/no/such/dir/registry.json"], "does not exist"),
], ids=["bad_fixture", "missing_fixture", "no_kind", "bad_id", "bad_semantics", "static_without_calibration",
        "quantised_without_soak", "missing_registry_dir"])
def test_bad_input_is_refused_and_nothing_is_written(user, args, message):
    src, reg = user
    atomic_write_npz(src.parent / "bad.npz", {"feats": np.zeros((4, 6), np.float32)})
    args = [str(src.parent / a) if a.endswith(".npz") else a for a in args]
    r = run(TOOL, src, *(["--registry", reg] if "--registry" not in args else []), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(reg.parent.iterdir()) == []


def test_an_int8_that_quantises_nothing_is_refused(user):
    src, reg = user
    assert register(src, reg, "--kind", "fr", "--soak-data", src.parent / "soak.npz").returncode == 0
    fake = src.parent / "fake.int8.onnx"
    fake.write_bytes(testutil.tiny_mlp(1, n_in=6, hidden=4))  # smaller, but every weight still fp32
    before = reg.read_bytes()
    r = register(reg.parent / "scorer.onnx", reg, "--quant-mode", "dynamic", "--int8", fake)
    assert r.returncode == 4 and "quantises no weight" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert reg.read_bytes() == before and not (reg.parent / "scorer.int8.onnx").exists()


def test_never_overwrites_another_registered_model(user, tmp_path):
    src, reg = user
    assert register(src, reg, "--kind", "fr").returncode == 0
    other = tmp_path / "other" / "scorer.onnx"
    other.parent.mkdir()
    other.write_bytes(testutil.tiny_mlp(5, n_in=6, hidden=32))
    before = (reg.parent / "scorer.onnx").read_bytes()
    r = register(other, reg, "--kind", "fr")
    assert r.returncode == 2 and "never overwrites it" in r.stderr
    assert (reg.parent / "scorer.onnx").read_bytes() == before


def test_help_exits_0():
    r = run(TOOL, "--help")
    assert r.returncode == 0 and "Usage:" in r.stdout and "--soak-data" in r.stdout


def test_residual_of_is_recorded_and_checked_against_the_graph(user):
    src, reg = user
    output = onnx.load(str(src)).graph.output[0].name
    r = register(src, reg, "--kind", "nr", "--residual-of", f"{output}=features")
    assert r.returncode == 0, r.stderr
    assert json.loads(reg.read_text())["models"][0]["residual_of"] == {output: "features"}
    r = register(src, reg, "--kind", "nr", "--residual-of", "guide")
    assert r.returncode == 2 and "--residual-of: residual_of names input 'guide'" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(reg.read_text())["models"][0]["residual_of"] == {output: "features"}


def test_tiny_data_is_registered_with_a_warning_naming_the_count_and_the_minimum(user):
    src, reg = user
    rng = np.random.default_rng(1)
    atomic_write_npz(src.parent / "few.npz", {"features": rng.random((12, 6), dtype=np.float32)})
    atomic_write_npz(src.parent / "few_soak.npz", {"features": rng.random((4, 6), dtype=np.float32)})
    r = register(src, reg, "--kind", "fr", "--calibration-data", src.parent / "few.npz", "--soak-data", src.parent / "few_soak.npz")
    assert r.returncode == 0, r.stderr
    assert "few.npz: --calibration-data has 12 samples, fewer than the 16" in r.stderr
    assert "few_soak.npz: --soak-data has 4 samples, fewer than the 32" in r.stderr
    enough = reg.parent.parent / "enough" / "registry.json"
    enough.parent.mkdir()
    r = register(src, enough, "--kind", "fr", "--calibration-data", src.parent / "calib.npz", "--soak-data", src.parent / "soak.npz")
    assert r.returncode == 0 and "WARNING" not in r.stderr, r.stderr  # 64 and 32 samples: enough


PTQ_AUTO = Path.cwd() / "python" / "ptq_auto"


def test_a_registered_validation_set_is_all_ptq_auto_id_needs(user):
    src, reg = user
    rng = np.random.default_rng(2)
    atomic_write_npz(src.parent / "val.npz", {"features": rng.random((48, 6), dtype=np.float32)})
    base = ["--kind", "fr", "--calibration-data", src.parent / "calib.npz", "--soak-data", src.parent / "soak.npz"]
    assert register(src, reg, *base).returncode == 0
    missing = run(PTQ_AUTO, "--id", "scorer", "--registry", reg)
    assert missing.returncode == 2 and "register_model --validation-data" in missing.stderr, missing.stderr
    r = register(src, reg, *base, "--validation-data", src.parent / "val.npz")
    assert r.returncode == 0, r.stderr
    with np.load(reg.parent / "validation" / "scorer.val.npz") as z:
        assert z["features"].shape == (48, 6)
    out = reg.parent / "scorer.int8.onnx"
    chosen = run(PTQ_AUTO, "--id", "scorer", "--registry", reg, "--no-speedup", "size-only", "--output", out)
    assert chosen.returncode == 0 and "choice: " in chosen.stdout, chosen.stdout[-2000:] + chosen.stderr[-2000:]
    # register -> ptq_auto --id -> register_model --recipe: pinned with its mode, encoding and purpose.
    recipe_path = reg.parent / "scorer.int8.recipe.json"
    recipe = json.loads(recipe_path.read_text())
    assert recipe["int8_sha256"] == sha256_file(out)
    r = register(src, reg, "--recipe", recipe_path)
    assert r.returncode == 0, r.stderr
    entry = json.loads(reg.read_text())["models"][0]
    assert (entry["quant_mode"], entry["quant_encoding"], entry["quant_purpose"]) == (
        recipe["mode"], recipe["encoding"], recipe["purpose"])
    assert entry["int8_sha256"] == recipe["int8_sha256"] and registry.load(reg).get("scorer").quantised
    # A recipe that does not describe the file is refused, and nothing changes.
    before = reg.read_bytes()
    recipe_path.write_text(json.dumps({**recipe, "int8_sha256": "0" * 64}))
    r = register(src, reg, "--recipe", recipe_path)
    assert r.returncode == 2 and "not the artefact --recipe describes" in r.stderr and reg.read_bytes() == before


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_classifier_and_regressor_kinds_are_registered_as_such(user, kind):
    src, reg = user
    r = register(src, reg, "--kind", kind)
    assert r.returncode == 0, r.stderr
    assert json.loads(reg.read_text())["models"][0]["kind"] == kind
    assert json.loads((reg.parent / "scorer.json").read_text())["kind"] == kind


def test_the_exporters_local_paths_are_not_registered(user, tmp_path):
    """torch's dynamo exporter writes stack traces with local source paths into node metadata."""
    src, reg = user
    model = onnx.load(str(src))
    onnx.helper.set_model_props(model, {"exporter_trace": "/home/alice/train.py:12"})
    model.graph.node[0].metadata_props.add(key="pkg.torch.onnx.stack_trace", value='File "/home/alice/net.py", line 3')
    model.graph.node[0].doc_string = "/home/alice/net.py:3"
    traced = tmp_path / "traced.onnx"
    onnx.save(model, str(traced))
    assert register(traced, reg, "--kind", "fr").returncode == 0
    registered = (reg.parent / "traced.onnx").read_bytes()
    assert b"/home/alice" not in registered
    assert registry.load(reg).get("traced").sha256 == sha256_file(reg.parent / "traced.onnx")


def test_a_nan_budget_is_refused_before_anything_is_written(user):
    src, reg = user
    r = register(src, reg, "--kind", "fr", "--budget", "nan")
    assert r.returncode == 2 and "must be a finite number" in r.stderr and not reg.exists(), r.stderr


def test_held_out_data_is_never_a_calibration_or_validation_set(user):
    src, reg = user
    r = register(src, reg, "--kind", "fr", "--soak-data", src.parent / "soak.npz")
    assert r.returncode == 0, r.stderr
    fixture = reg.parent / "fixtures" / "scorer.soak.npz"
    copy = src.parent / "copy.npz"
    copy.write_bytes(fixture.read_bytes())
    before = {p: p.read_bytes() for p in reg.parent.rglob("*") if p.is_file()}
    for flag, value in (("--calibration-data", fixture), ("--validation-data", copy),
                        ("--calibration-data", src.parent / "soak.npz")):  # the --soak-data of this very call
        r = register(src, reg, "--soak-data", src.parent / "soak.npz", flag, value)
        assert r.returncode == 2, r.stderr
        assert f"{flag} {value} is the held-out set" in r.stderr and "Traceback" not in r.stderr
        assert {p: p.read_bytes() for p in reg.parent.rglob("*") if p.is_file()} == before


def test_files_that_are_not_small_regular_ones_are_refused_without_hanging(user):
    src, reg = user
    (reg.parent / "scorer.onnx").unlink(missing_ok=True)
    os.mkfifo(reg.parent / "scorer.onnx")  # the model's place in the registry: reading it would block under the lock
    r = subprocess.run([str(TOOL), src, "--registry", reg, "--kind", "fr"], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if not k.startswith("BUILD_")})
    assert r.returncode == 2 and "scorer.onnx" in r.stderr and "FIFO" in r.stderr and "Traceback" not in r.stderr, r.stderr
    (reg.parent / "scorer.onnx").unlink()
    huge = src.parent / "huge.int8.onnx"
    with open(huge, "wb") as f:
        f.truncate(1 << 40)  # 1 TiB, sparse: refused by its size, never read
    r = subprocess.run([str(TOOL), src, "--registry", reg, "--kind", "fr", "--quant-mode", "dynamic", "--soak-data",
                        src.parent / "soak.npz", "--int8", huge], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if not k.startswith("BUILD_")})
    assert r.returncode == 10 and str(huge) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (reg.parent / "registry.json").exists()


def test_a_data_folder_symlinked_out_of_the_registry_is_never_written_through(user, tmp_path):
    src, reg = user
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (reg.parent / "fixtures").symlink_to(elsewhere)
    r = register(src, reg, "--kind", "fr", "--soak-data", src.parent / "soak.npz")
    assert r.returncode == 9 and "outside the registry's directory" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(elsewhere.iterdir()) == [] and not reg.exists()


def test_validates_before_it_writes_so_no_model_is_replaced(user, tmp_path):
    """Validate, then write: entry 'other' is a model named scorer.int8.onnx, so pinning scorer's int8
    would replace it and leave the registry invalid (file_named_twice). Refused, nothing written."""
    src, reg = user
    other = reg.parent / "scorer.int8.onnx"  # a model inside the registry's directory is registered where it is
    other.write_bytes(testutil.tiny_mlp(1, n_in=6, hidden=8))
    assert register(other, reg, "--kind", "fr", "--id", "other").returncode == 0
    assert registry.load(reg).get("other").onnx == other
    int8 = tmp_path / "mine.int8.onnx"
    assert run(PTQ_DYNAMIC, src, "--output", int8).returncode == 0
    before = {p: p.read_bytes() for p in reg.parent.rglob("*") if p.is_file()}
    r = register(src, reg, "--kind", "fr", "--quant-mode", "dynamic", "--int8", int8, "--soak-data", src.parent / "soak.npz")
    assert r.returncode == 2 and "[file_named_twice]" in r.stderr and "nothing was written" in r.stderr, r.stderr
    assert {p: p.read_bytes() for p in reg.parent.rglob("*") if p.is_file()} == before
    registry.load(reg, strict=True)  # still valid
