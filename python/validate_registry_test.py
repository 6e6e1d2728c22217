"""//python:validate_registry end to end: exit codes, messages, path resolution, JSON report."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tinyq.registry import registry
from tinyq_testing import testutil

# Not resolved: the stub finds its runfiles from this path.
TOOL = Path.cwd() / "python" / "validate_registry"


def run(*args, cwd=None, env_extra=None):
    env = dict(os.environ)
    env.pop("BUILD_WORKING_DIRECTORY", None)
    env.pop("BUILD_WORKSPACE_DIRECTORY", None)
    env.update(env_extra or {})
    return subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)


@pytest.fixture
def tree(tmp_path):
    return testutil.make_tree(tmp_path)


def test_valid_registry_prints_ok_with_count(tree):
    r = run(tree)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"OK: {tree}: 3 models valid (2 quantised)")


def test_default_is_the_workspace_registry(tree):
    r = run(env_extra={"BUILD_WORKSPACE_DIRECTORY": str(tree.parent.parent.parent)})
    assert r.returncode == 0, r.stderr
    assert "3 models valid" in r.stdout


def test_relative_path_resolves_against_the_callers_directory(tree):
    caller = tree.parent.parent  # <tmp>/model
    r = run("tiny/registry.json", cwd="/", env_extra={"BUILD_WORKING_DIRECTORY": str(caller)})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("case", testutil.BAD_CASES, ids=[c.name for c in testutil.BAD_CASES])
def test_bad_input_exits_1_naming_entry_field_and_fix(tree, case):
    """Every finding names the entry, the field and the fix. Errors exit 1; a warning (a quantised
    entry without a soak fixture) exits 0 and fails only under --strict."""
    case.mutate(tree)
    warning = case.code in registry.WARNING_CODES
    r = run(tree, "--strict")
    assert r.returncode == 1, (r.stdout, r.stderr)
    line = next(l for l in r.stderr.splitlines() if f"[{case.code}]" in l)
    assert str(tree) in line and (case.pointer or "/") in line and "Fix:" in line
    assert "INVALID" in r.stderr and "Traceback" not in r.stderr
    r = run(tree)
    assert r.returncode == (0 if warning else 1), (r.stdout, r.stderr)
    if warning:
        assert f"warning: {tree}" in r.stderr and "1 warnings" in r.stdout


def test_missing_registry_exits_2(tmp_path):
    r = run(tmp_path / "none.json")
    assert r.returncode == 2
    assert "registry not found" in r.stderr and "Traceback" not in r.stderr


def test_unknown_flag_and_extra_args_exit_2(tree):
    assert run(tree, "--bogus").returncode == 2
    r = run(tree, tree)
    assert r.returncode == 2 and "at most one REGISTRY" in r.stderr


def test_out_json_report_with_provenance(tree, tmp_path):
    out = tmp_path / "report.json"
    r = run(tree, "--out-json", out)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.endswith("\n")
    report = json.loads(text)
    assert report["valid"] is True and report["model_count"] == 3 and report["findings"] == []
    prov = report["run_provenance"]
    assert prov["tool"]["name"] == "validate_registry"
    assert prov["args"] == {"out-json": str(out), "recover": False, "strict": False}
    assert prov["inputs"][0]["path"] == str(tree) and len(prov["inputs"][0]["sha256"]) == 64
    assert prov["versions"]["onnx"]


def test_out_json_report_lists_findings(tree, tmp_path):
    testutil.edit_registry(tree, lambda d: d["models"][1].update(quant_mode="int4"))
    out = tmp_path / "report.json"
    assert run(tree, "--out-json", out).returncode == 1
    report = json.loads(out.read_text())
    assert report["valid"] is False
    assert report["findings"][0]["code"] == "unknown_quant_mode"
    assert report["findings"][0]["entry"] == "m_dyn"


def test_the_projects_own_registry_is_valid_under_strict():
    """CI holds the zoo's registry to --strict: a quantised entry without its soak fixture fails."""
    r = run(Path.cwd() / "model" / "tiny" / "registry.json", "--strict")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stdout + r.stderr


def test_a_planted_journal_is_refused_and_recover_sets_it_aside(tree, tmp_path):
    # The attack from issue 30: a journal that "commits" the deletion of a file outside the registry.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    journal = tree.parent / ".tinyq-journal.json"
    journal.write_text(json.dumps({"state": "commit", "txid": "0" * 32,
                                   "files": [{"final": str(victim), "tmp": None, "old": None}]}))
    r = run(tree)
    assert r.returncode == 13, r.stderr
    assert f"{journal}: files[0].final" in r.stderr and "touched nothing" in r.stderr and "--recover" in r.stderr
    assert "Traceback" not in r.stderr and victim.read_text() == "precious"
    r = run(tree, "--recover")
    assert r.returncode == 0, r.stderr
    assert "set aside" in r.stderr and victim.read_text() == "precious" and not journal.exists()
    assert json.loads((tree.parent / ".tinyq-journal.refused.json").read_text())["files"][0]["final"] == str(victim)
