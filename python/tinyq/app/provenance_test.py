"""tinyq.app.provenance: the run_provenance block carries real hashes, versions and host facts."""

import hashlib
import json
import platform
from pathlib import Path

from tinyq.app import provenance

LOCK = Path("python/requirements_lock.txt")


def test_collect_records_tool_args_files_versions_and_host(tmp_path):
    entry = tmp_path / "tool.py"
    entry.write_text("print('hi')\n")
    src = tmp_path / "in.onnx"
    src.write_bytes(b"model")
    dst = tmp_path / "out.onnx"
    dst.write_bytes(b"int8")
    block = provenance.collect(
        tool="ptq_dynamic",
        entry_point=entry,
        argv=["ptq_dynamic", str(src), "--per-channel"],
        args={"per-channel": True, "output": dst, "shape": (1, 6), "z": None},
        inputs=[(src, "fp32_model")],
        outputs=[(dst, "int8_model"), (tmp_path / "absent", "report")],
    )
    assert block["schema"] == "tinyq-run-provenance-v1"
    assert block["tool"] == {
        "name": "ptq_dynamic",
        "entry_point": str(entry),
        "sha256": hashlib.sha256(b"print('hi')\n").hexdigest(),
    }
    assert block["argv"] == ["ptq_dynamic", str(src), "--per-channel"]
    assert block["args"] == {"output": str(dst), "per-channel": True, "shape": [1, 6], "z": None}
    assert list(block["args"]) == sorted(block["args"])
    assert block["inputs"] == [
        {"path": str(src), "kind": "fp32_model", "sha256": hashlib.sha256(b"model").hexdigest(), "bytes": 5}
    ]
    assert block["outputs"][0]["sha256"] == hashlib.sha256(b"int8").hexdigest()
    assert block["outputs"][1] == {"path": str(tmp_path / "absent"), "kind": "report", "sha256": None, "bytes": None}


def test_versions_are_the_locked_ones():
    versions = provenance.package_versions()
    assert set(versions) == {"onnx", "onnxruntime", "openvino", "torch", "numpy"}
    locked = {}
    for line in LOCK.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ")[0].split("==")
            locked[name] = version
    for name, version in versions.items():
        assert version == locked[name], (name, version)


def test_lock_sha256_is_the_lock_files_hash():
    assert provenance.lock_sha256() == hashlib.sha256(LOCK.read_bytes()).hexdigest()


def test_host_facts():
    host = provenance.host_facts()
    assert host["cpu_count"] >= 1
    assert host["machine"] == platform.machine()
    assert set(host["isa_flags"]) <= set(provenance.ISA_FLAGS)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and "avx512_vnni" in cpuinfo.read_text():
        assert "avx512_vnni" in host["isa_flags"]
        assert host["cpu_model"]


def test_write_report_is_sorted_with_trailing_newline(tmp_path):
    out = tmp_path / "report.json"
    provenance.write_report(out, {"z": 1, "a": {"y": Path("/p"), "b": float("nan")}})
    text = out.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {"a": {"b": None, "y": "/p"}, "z": 1}
    assert text.index('"a"') < text.index('"z"')


def test_paths_inside_the_workspace_are_relative_with_the_root_once(tmp_path, monkeypatch):
    """No local path but the root, which a user can drop: paths under the workspace relative to it,
    the tool by its path in the repository, anything outside as given."""
    root = tmp_path / "ws"
    (root / "model").mkdir(parents=True)
    src = root / "model" / "m.onnx"
    src.write_bytes(b"model")
    tool = tmp_path / "out" / "ptq_auto.runfiles" / "tinyq" / "python" / "ptq_auto.py"
    tool.parent.mkdir(parents=True)
    tool.write_text("pass\n")
    elsewhere = tmp_path / "elsewhere.npz"
    elsewhere.write_bytes(b"x")
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", str(root))
    block = provenance.collect(tool="ptq_auto", entry_point=tool, argv=[str(tool), "--fp32", str(src)],
                               args={"fp32": str(src), "data": str(elsewhere)}, inputs=[(src, "fp32_model"), (elsewhere, "data")])
    assert block["root"] == str(root)
    assert block["tool"]["entry_point"] == "python/ptq_auto.py"
    assert block["argv"] == ["python/ptq_auto.py", "--fp32", "model/m.onnx"]
    assert block["args"] == {"fp32": "model/m.onnx", "data": str(elsewhere)}
    assert [i["path"] for i in block["inputs"]] == ["model/m.onnx", str(elsewhere)]
    without_root = json.dumps({k: v for k, v in block.items() if k != "root"})
    assert str(root) not in without_root
