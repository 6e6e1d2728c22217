"""The lock is what the hermetic venv installs: every pin exact and hashed, nothing missing."""

import re
from pathlib import Path

PYTHON = Path("python")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries(lock="requirements_lock.txt"):
    """{name: (version, [hashes])} from a lock file."""
    entries, current = {}, None
    for line in (PYTHON / lock).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line.startswith((" ", "\t")):
            m = re.match(r"^([A-Za-z0-9._-]+)==([^ \\]+)", stripped)
            assert m, f"requirements_lock.txt: unpinned or unhashed line {line!r}"
            current = canonical(m.group(1))
            entries[current] = (m.group(2), [])
        else:
            for h in re.findall(r"--hash=sha256:([0-9a-f]{64})", stripped):
                entries[current][1].append(h)
    return entries


def direct_requirements(source="requirements.in"):
    names = []
    for line in (PYTHON / source).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):  # -c: a constraints file, not a requirement
            names.append(canonical(_NAME.match(line).group(1)))
    return names


def test_every_pin_is_exact_and_hashed():
    entries = lock_entries()
    assert len(entries) > 10
    for name, (version, hashes) in entries.items():
        assert hashes, f"{name}=={version} has no --hash in requirements_lock.txt"


def test_every_direct_requirement_is_locked():
    entries = lock_entries()
    for name in direct_requirements():
        assert name in entries, f"{name} is in requirements.in but not in requirements_lock.txt; run //python:requirements_update"


def test_issue_stack_is_locked():
    entries = lock_entries()
    for name in ("onnx", "onnxruntime", "openvino", "torch", "numpy", "absl-py", "jsonschema", "pytest"):
        assert name in entries, name


def test_torch_is_the_cpu_wheel_and_no_cuda_packages():
    entries = lock_entries()
    version, hashes = entries["torch"]
    assert version == "2.13.0+cpu"
    assert len(hashes) == 1, "torch must pin exactly the one CPU wheel"
    cuda = sorted(n for n in entries if n.startswith(("nvidia-", "cuda-", "triton")))
    assert not cuda, f"CUDA packages crept into the CPU lock: {cuda}"


def test_cuda_set_swaps_onnxruntime_for_onnxruntime_gpu_and_nothing_else():
    cpu, cuda = direct_requirements(), direct_requirements("requirements_cuda.in")
    assert "onnxruntime-gpu" not in cpu and "onnxruntime" not in cuda
    assert [n if n != "onnxruntime" else "onnxruntime-gpu" for n in cpu] == cuda
    cpu_lock, cuda_lock = lock_entries(), lock_entries("requirements_cuda_lock.txt")
    for name, (_, hashes) in cuda_lock.items():
        assert hashes, f"{name} has no --hash in requirements_cuda_lock.txt"
    assert set(cuda_lock) - set(cpu_lock) == {"onnxruntime-gpu"}
    assert set(cpu_lock) - set(cuda_lock) == {"onnxruntime"}


def test_runtime_set_is_lean_and_pins_the_full_sets_versions():
    """--config=runtime's venv: no torch or other training, benchmark or test package, and every
    version equal to the full set's, so that both build the same int8 bytes."""
    runtime, full = lock_entries("requirements_runtime_lock.txt"), lock_entries()
    for name in direct_requirements("requirements_runtime.in"):
        assert name in runtime, f"{name} is in requirements_runtime.in but not locked; run //python:requirements_update -- --runtime"
    for name, (version, hashes) in runtime.items():
        assert hashes, f"{name}=={version} has no --hash in requirements_runtime_lock.txt"
        assert full.get(name, (None,))[0] == version, f"{name}=={version}: the full lock has {full.get(name, ('none',))[0]}"
    heavy = {"torch", "torchao", "nncf", "openvino", "onnxscript", "matplotlib", "scikit-learn", "skl2onnx",
             "imageio-ffmpeg", "pip-tools"}
    assert not heavy & set(runtime), sorted(heavy & set(runtime))
    assert not [n for n in runtime if n.startswith(("nvidia-", "cuda-", "triton"))]
