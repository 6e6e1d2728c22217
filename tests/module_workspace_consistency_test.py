"""MODULE.bazel (Bazel >= 7) and WORKSPACE (Bazel 4.2.3) declare the same external repositories.

Both files are Starlark, which parses as Python: this reads the calls, never executes them.
"""

import ast
from pathlib import Path

# Repositories WORKSPACE takes from a local_repository (a shim, or Debian's copy) and bzlmod from the registry.
SHIMMED_BY_BAZEL_DEP = {"bazel_skylib", "rules_cc", "rules_python"}
# Repositories Bazel >= 7 provides itself; Bazel 4.2.3 would download them, so WORKSPACE shims them.
PROVIDED_BY_BAZEL = {"remote_coverage_tools"}


def calls(path):
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else f"{ast.unparse(func.value)}.{func.attr}"
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if isinstance(k.value, ast.Constant)}
            args = [ast.literal_eval(a) for a in node.args if isinstance(a, ast.Constant)]
            yield name, args, kwargs


def workspace_repos():
    return {kw["name"]: (name, kw) for name, _, kw in calls("WORKSPACE") if "name" in kw and name != "workspace"}


def module_repos():
    repos = {}
    for name, _, kw in calls("MODULE.bazel"):
        if name == "new_local_repository":
            repos[kw["name"]] = ("new_local_repository", kw)
        elif name == "bazel_dep":
            repos[kw["name"]] = ("bazel_dep", kw)
        elif name == "venv.lock":
            repos[kw["name"]] = ("tinyq_venv", kw)
    return repos


def test_same_repository_names():
    ws, mod = set(workspace_repos()), set(module_repos())
    assert ws - PROVIDED_BY_BAZEL == mod, f"only in WORKSPACE: {sorted(ws - PROVIDED_BY_BAZEL - mod)}; only in MODULE.bazel: {sorted(mod - ws)}"


def test_local_repositories_are_identical():
    ws, mod = workspace_repos(), module_repos()
    for name, (rule, kw) in ws.items():
        if name in SHIMMED_BY_BAZEL_DEP:
            assert rule == "local_repository" and mod[name][0] == "bazel_dep", name
        elif rule == "new_local_repository":
            assert mod[name] == (rule, kw), f"{name} differs: WORKSPACE {kw}, MODULE.bazel {mod[name][1]}"


def test_same_lock_files():
    ws, mod = workspace_repos(), module_repos()
    venvs = {name: kw["lock"] for name, (rule, kw) in ws.items() if rule == "tinyq_venv"}
    assert venvs == {"tinyq_venv": "//python:requirements_lock.txt", "tinyq_venv_cuda": "//python:requirements_cuda_lock.txt",
                     "tinyq_venv_runtime": "//python:requirements_runtime_lock.txt"}
    assert {name: mod[name][1]["lock"] for name in venvs} == venvs


def test_module_uses_every_venv_repo():
    text = Path("MODULE.bazel").read_text()
    assert 'use_repo(venv, "tinyq_venv", "tinyq_venv_cuda", "tinyq_venv_runtime")' in text


def test_same_toolchains():
    ws = [args for name, args, _ in calls("WORKSPACE") if name == "register_toolchains"]
    mod = [args for name, args, _ in calls("MODULE.bazel") if name == "register_toolchains"]
    assert ws == mod == [["@tinyq_venv//:toolchain"]]


def test_module_extension_reuses_the_workspace_rule():
    text = Path("tools/python/extensions.bzl").read_text()
    assert 'load("//tools/python:venv.bzl", "tinyq_venv")' in text
