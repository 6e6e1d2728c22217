"""The hermetic interpreter sees the locked packages and nothing of the host's."""

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

LOCK = Path("python/requirements_lock.txt")
# The interpreter wrapper the Python toolchain runs (@tinyq_venv//:python).
TOOLCHAIN_PYTHON = Path("../tinyq_venv/python")


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def locked():
    pins = {}
    for line in LOCK.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def host_site_packages():
    """The site-packages of the interpreter the venv was made from."""
    paths = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})
    return {Path(paths["purelib"]), Path(paths["platlib"])}


def test_running_in_a_venv():
    assert sys.prefix != sys.base_prefix, "not in a virtualenv"
    assert sys.flags.no_user_site and sys.flags.dont_write_bytecode and sys.flags.safe_path


def test_host_site_packages_not_on_path():
    host = {p.resolve() for p in host_site_packages()}
    on_path = {Path(p).resolve() for p in sys.path if p}
    assert not host & on_path


def test_installed_distributions_are_exactly_the_lock():
    pins = locked()
    installed = {canonical(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    assert installed == pins


def test_host_only_packages_cannot_be_imported():
    pins = locked()
    host_only = []
    for site in host_site_packages():
        if not site.is_dir():
            continue
        for dist in importlib.metadata.distributions(path=[str(site)]):
            if canonical(dist.metadata["Name"]) in pins:
                continue
            top = (dist.read_text("top_level.txt") or "").split()
            host_only += [t for t in top if t.isidentifier() and not t.startswith("_")]
    if not host_only:
        pytest.skip("the host interpreter has no package outside the lock")
    for name in sorted(set(host_only))[:25]:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            # Stdlib modules and modules the lock provides under another distribution are fine.
            origin = Path(spec.origin or "").resolve()
            assert not any(str(origin).startswith(str(s.resolve())) for s in host_site_packages()), name


def test_user_site_is_ignored_by_the_toolchain_interpreter(tmp_path):
    """A module in PYTHONUSERBASE's site-packages is importable by the host, not by the toolchain."""
    base = tmp_path / "userbase"
    site = Path(sysconfig.get_path("purelib", "posix_user", vars={"userbase": str(base)}))
    site.mkdir(parents=True)
    (site / "tinyq_leak_probe.py").write_text("LEAKED = True\n")
    env = dict(os.environ, PYTHONUSERBASE=str(base))
    probe = ["-c", "import tinyq_leak_probe"]
    host = Path(sys.base_prefix) / "bin" / "python3"
    r = subprocess.run([str(host), *probe], env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"the probe must work on the host interpreter: {r.stderr}"
    r = subprocess.run([str(TOOLCHAIN_PYTHON), *probe], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr


def test_torch_is_the_locked_cpu_build():
    torch = importlib.import_module("torch")
    assert torch.__version__ == "2.13.0+cpu"
    assert not torch.cuda.is_available()
