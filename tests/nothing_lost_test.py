"""Nothing lost, ever (issue 23): SIGKILL at every write and rename of register_model, ptq_static and
update_pins leaves the old state or the new one; concurrent register_model writers lose no entry; a
full disk on any output's filesystem writes nothing and says which file."""

import hashlib
import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tinyq.io.fileio import atomic_write_npz
from tinyq_testing import testutil

BIN = Path.cwd() / "python"
REGISTER, PTQ_STATIC, PTQ_DYNAMIC = BIN / "register_model", BIN / "ptq_static", BIN / "ptq_dynamic"
VALIDATE, UPDATE_PINS = BIN / "validate_registry", Path.cwd() / "model" / "update_pins"
KILLED = -9


def run(tool, *args, kill_at=None, cwd=None, ws=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_") and k != "TINYQ_FAULT_KILL_AT"}
    if kill_at:
        env["TINYQ_FAULT_KILL_AT"] = str(kill_at)
    if ws:
        env["BUILD_WORKSPACE_DIRECTORY"] = str(ws)
    return subprocess.run([str(tool), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def snapshot(root):
    """{relative path: sha256} of every visible file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and not any(part.startswith(".") for part in p.parts[-1:])}


def hidden(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob(".*"))


def user_files(d):
    """A user's model and data, outside the registry."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "scorer.onnx").write_bytes(testutil.tiny_mlp(3, n_in=6, hidden=32))
    (d / "scorer.int8.onnx").write_bytes(testutil.int8_of(testutil.tiny_mlp(3, n_in=6, hidden=32)))
    rng = np.random.default_rng(0)
    atomic_write_npz(d / "calib.npz", {"features": rng.random((64, 6), dtype=np.float32)})
    atomic_write_npz(d / "calib_b.npz", {"features": rng.random((64, 6), dtype=np.float32) * 2})
    for name, n in (("soak.npz", 48), ("val.npz", 40)):
        atomic_write_npz(d / name, {"features": rng.random((n, 6), dtype=np.float32), "target": rng.random(n, dtype=np.float32)})
    return d


def kill_at_every_step(make_old, tool_args, check, cwd=None, ws=None):
    """Runs the tool once per step N with SIGKILL at step N, each time from a fresh old state; after each
    kill, `check(root, old)` judges what the next run sees. Returns how many kills were made."""
    kills = 0
    for step in range(1, 300):
        root = make_old(step)
        old = snapshot(root)
        r = run(*tool_args(root), kill_at=step, cwd=cwd(root) if cwd else None, ws=ws(root) if ws else None)
        if r.returncode != KILLED:
            assert r.returncode == 0, f"step {step}: {r.stderr}"
            return kills, root, old
        kills += 1
        check(root, old, step)
    pytest.fail("the tool was still being killed after 300 steps")


def registry_check(new_of, reg_dir="reg"):
    """After a kill: validate_registry (the next run) passes, and the tree is the old one or the new one."""
    def check(root, old, step):
        reg = root / reg_dir / "registry.json"
        if reg.exists():
            r = run(VALIDATE, reg)
            assert r.returncode == 0, f"kill at step {step}: the registry is invalid after recovery: {r.stderr}"
        now = snapshot(root)
        assert now in (old, new_of()), f"kill at step {step}: a mix of old and new files: {sorted(set(now.items()) ^ set(old.items()))}"
        assert hidden(reg.parent) == [], f"kill at step {step}: left {hidden(reg.parent)}"
    return check


def test_register_model_killed_at_every_step_leaves_old_or_new(tmp_path):
    def make_old(step):
        root = tmp_path / f"s{step}"
        user_files(root / "mine")
        (root / "reg").mkdir()
        (root / "reg" / "other.onnx").write_bytes(testutil.tiny_mlp(1))
        assert run(REGISTER, root / "reg" / "other.onnx", "--registry", root / "reg" / "registry.json", "--kind", "fr").returncode == 0
        return root

    args = lambda root: (REGISTER, root / "mine" / "scorer.onnx", "--registry", root / "reg" / "registry.json", "--kind", "fr",
                         "--calibration-data", root / "mine" / "calib.npz", "--soak-data", root / "mine" / "soak.npz",
                         "--validation-data", root / "mine" / "val.npz", "--quant-mode", "dynamic",
                         "--int8", root / "mine" / "scorer.int8.onnx")
    reference = make_old(0)
    assert run(*args(reference)).returncode == 0
    new = snapshot(reference)
    kills, root, _ = kill_at_every_step(make_old, args, registry_check(lambda: new))
    assert snapshot(root) == new
    assert kills >= 15, f"only {kills} steps: the hook must stop every write and rename"


def test_ptq_static_killed_at_every_step_never_pairs_an_artefact_with_another_report(tmp_path):
    def make_old(step):
        root = tmp_path / f"s{step}"
        user_files(root / "mine")
        (root / "out").mkdir()
        r = run(PTQ_STATIC, root / "mine" / "scorer.onnx", "--calibration", root / "mine" / "calib.npz",
                "--output", root / "out" / "s.int8.onnx", "--report-out", root / "out" / "s.json")
        assert r.returncode == 0, r.stderr
        return root

    def check(root, old, step):
        out = root / "out"
        run(VALIDATE, out / "none.json")  # the next tinyq run that reads the directory finishes or sweeps the kill's work
        int8, report = out / "s.int8.onnx", json.loads((out / "s.json").read_text())
        recorded = {o["path"].split("/")[-1]: o["sha256"] for o in report["run_provenance"]["outputs"]}
        assert recorded["s.int8.onnx"] == hashlib.sha256(int8.read_bytes()).hexdigest(), f"kill at step {step}: a mixed pair"
        assert hidden(out) == [], f"kill at step {step}: left {hidden(out)}"

    args = lambda root: (PTQ_STATIC, root / "mine" / "scorer.onnx", "--calibration", root / "mine" / "calib_b.npz",
                         "--output", root / "out" / "s.int8.onnx", "--report-out", root / "out" / "s.json")
    kills, root, old = kill_at_every_step(make_old, args, check)
    assert snapshot(root) != old and kills >= 5


ZOO = textwrap.dedent('''
    ZOO_INT8 = {
        "m_dyn": {"mode": "dynamic", "args": [], "encoding": "weight_only_s8_per_tensor", "purpose": "size"},
    }
''')


def test_update_pins_killed_at_every_step_leaves_old_or_new(tmp_path):
    """The pinning path: a fresh int8 for m_dyn, m_static back to fp32 (its int8 removed), every sidecar
    and the registry, as one unit."""
    def make_old(step):
        root = tmp_path / f"s{step}"
        testutil.make_tree(root)
        (root / "model" / "zoo.bzl").write_text(ZOO)
        (root / "model" / "int8").mkdir()
        (root / "model" / "int8" / "m_dyn.int8.onnx").write_bytes(testutil.int8_of(testutil.tiny_mlp(11)))
        return root

    reference = make_old(0)
    assert run(UPDATE_PINS, cwd=reference, ws=reference).returncode in (0, 1)
    new = snapshot(reference)
    kills, root, _ = kill_at_every_step(make_old, lambda root: (UPDATE_PINS,), registry_check(lambda: new, "model/tiny"),
                                        cwd=lambda root: root, ws=lambda root: root)
    assert kills >= 10


def _register_five(reg, d, writer):
    script = "; ".join(
        f"{REGISTER} {d / f'w{writer}_{i}.onnx'} --registry {reg} --kind fr > /dev/null" for i in range(5))
    return subprocess.Popen(["bash", "-c", f"set -e; {script}"],
                            env={k: v for k, v in os.environ.items() if not k.startswith("BUILD_")})


@pytest.mark.parametrize("writers", [2, 4])
def test_concurrent_register_model_writers_lose_no_entry(tmp_path, writers):
    reg, d = tmp_path / "reg" / "registry.json", tmp_path / "mine"
    reg.parent.mkdir()
    d.mkdir()
    for w in range(writers):
        for i in range(5):
            (d / f"w{w}_{i}.onnx").write_bytes(testutil.tiny_mlp(10 * w + i))
    procs = [_register_five(reg, d, w) for w in range(writers)]
    assert [p.wait(timeout=600) for p in procs] == [0] * writers
    ids = sorted(m["id"] for m in json.loads(reg.read_text())["models"])
    assert ids == sorted(f"w{w}_{i}" for w in range(writers) for i in range(5))
    assert run(VALIDATE, reg).returncode == 0


# ENOSPC: each output on a tmpfs too small for it, in a private mount namespace.
FULL_DISK = textwrap.dedent('''
    set -u
    mount -t tmpfs -o size=1m tinyq_full "$FULL" || exit 97
    cp -a "$SEED/." "$FULL/"
    free=$(df --output=avail -B1 "$FULL" | tail -1)
    fallocate -l "$free" "$FULL/.filler" 2>/dev/null || dd if=/dev/zero of="$FULL/.filler" bs=4096 count=$((free / 4096)) 2>/dev/null
    "$@" > "$SNAP/stdout" 2> "$SNAP/stderr"; echo $? > "$SNAP/rc"
    rm -f "$FULL/.filler"; cp -a "$FULL/." "$SNAP/tree/"
''')


def on_full_disk(tmp_path, seed, argv_of):
    """Runs argv_of(full) with `full` a nearly full tmpfs seeded with seed's files; returns (rc, stderr, tree)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed: no private mount namespace for a small tmpfs")
    full, snap = tmp_path / "full", tmp_path / "snap"
    full.mkdir()
    (snap / "tree").mkdir(parents=True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}, "FULL": str(full), "SEED": str(seed),
           "SNAP": str(snap)}
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", FULL_DISK, "full_disk",
                        *map(str, argv_of(full))], env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 or not (snap / "rc").exists():
        pytest.skip(f"cannot mount a small tmpfs in a private namespace here (unshare exit {r.returncode}: "
                    f"{r.stderr.strip()[:200]}); the ENOSPC cases need one")
    return int((snap / "rc").read_text()), (snap / "stderr").read_text(), snap / "tree"


@pytest.mark.parametrize("full_one", ["--output", "--report-out"])
def test_a_full_disk_under_either_output_writes_neither_and_names_the_file(tmp_path, full_one):
    mine = user_files(tmp_path / "mine")
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "s.int8.onnx").write_bytes(b"old artefact")
    (tmp_path / "roomy").mkdir()
    (tmp_path / "roomy" / "s.json").write_bytes(b"old report")

    def argv(full):
        out = {"--output": full / "s.int8.onnx", "--report-out": tmp_path / "roomy" / "s.json"}
        if full_one == "--report-out":
            out = {"--output": tmp_path / "roomy" / "s.int8.onnx", "--report-out": full / "s.json"}
        return [PTQ_DYNAMIC, mine / "scorer.onnx", "--output", out["--output"], "--report-out", out["--report-out"]]

    rc, err, tree = on_full_disk(tmp_path, seed, argv)
    assert rc == 12 and "No space left on device" in err and "Traceback" not in err, err
    assert str(tmp_path / "full") in err, f"the error must name the file on the full filesystem: {err}"
    assert (tmp_path / "roomy" / "s.json").read_bytes() == b"old report"
    assert not (tmp_path / "roomy" / "s.int8.onnx").exists()
    assert (tree / "s.int8.onnx").read_bytes() == b"old artefact" and hidden(tree) == []


def test_a_full_disk_under_the_registry_writes_nothing(tmp_path):
    mine = user_files(tmp_path / "mine")
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "other.onnx").write_bytes(testutil.tiny_mlp(1))
    assert run(REGISTER, seed / "other.onnx", "--registry", seed / "registry.json", "--kind", "fr").returncode == 0
    before = snapshot(seed)
    rc, err, tree = on_full_disk(tmp_path, seed, lambda full: [
        REGISTER, mine / "scorer.onnx", "--registry", full / "registry.json", "--kind", "fr",
        "--soak-data", mine / "soak.npz", "--calibration-data", mine / "calib.npz"])
    assert rc == 12 and "No space left on device" in err and "nothing was written" in err and "Traceback" not in err, err
    assert snapshot(tree) == before and hidden(tree) == []


def test_update_pins_validates_before_it_writes(tmp_path):
    """An entry whose model lies outside the registry: update_pins deleted the int8 and rewrote the
    sidecar beside it before noticing. A registry that is not JSON printed a traceback."""
    root = tmp_path / "ws"
    reg = testutil.make_tree(root)
    (root / "model" / "zoo.bzl").write_text(ZOO)
    (root / "model" / "int8").mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "v.onnx").write_bytes(testutil.tiny_mlp(5))
    (victim / "v.int8.onnx").write_bytes(b"keep me")
    (victim / "v.json").write_text('{"mine": true}\n')
    data = json.loads(reg.read_text())
    data["models"][0]["onnx"] = "../../../victim/v.onnx"
    reg.write_text(json.dumps(data))
    before = snapshot(tmp_path)
    r = run(UPDATE_PINS, cwd=root, ws=root)
    assert r.returncode == 2 and "[path_escape]" in r.stderr and "nothing was written" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and snapshot(tmp_path) == before
    reg.write_text("{not json")
    r = run(UPDATE_PINS, cwd=root, ws=root)
    assert r.returncode == 2 and "[malformed_json]" in r.stderr and "Traceback" not in r.stderr, r.stderr
