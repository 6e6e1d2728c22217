"""Regenerates python/requirements_lock.txt from python/requirements.in, every pin hashed.

Usage: tools/bazel run //python:requirements_update [-- [--cuda|--runtime] extra pip-compile flags, e.g. --upgrade]

--cuda regenerates the CUDA set instead: requirements_cuda.in -> requirements_cuda_lock.txt.
--runtime regenerates the lean runtime set: requirements_runtime.in -> requirements_runtime_lock.txt,
constrained to the full lock's versions (regenerate that one first).

Runs pip-compile (pip-tools, itself locked) inside the hermetic venv, against the package
indexes and find-links of this machine's pip configuration, where the CPU torch wheel lies.
"""

import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(__doc__)
        return 0
    workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY")
    if not workspace:
        sys.stderr.write("requirements_update: run me with `tools/bazel run //python:requirements_update`\n")
        return 2
    python_dir = Path(workspace) / "python"
    args = sys.argv[1:]
    sets = {"--cuda": ("requirements_cuda.in", "requirements_cuda_lock.txt"),
            "--runtime": ("requirements_runtime.in", "requirements_runtime_lock.txt")}
    chosen = [a for a in args if a in sets]
    args = [a for a in args if a not in sets]
    source, lock = sets[chosen[0]] if chosen else ("requirements.in", "requirements_lock.txt")
    cmd = [
        sys.executable,
        "-m",
        "piptools",
        "compile",
        "--quiet",
        "--generate-hashes",
        "--allow-unsafe",
        "--strip-extras",
        # Index URLs and find-links belong to each machine's pip configuration, not the lock.
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--resolver=backtracking",
        f"--output-file={lock}",
        source,
        *args,
    ]
    print("requirements_update:", " ".join(cmd[1:]), flush=True)
    # pip-compile names this command in the lock's header.
    command = "tools/bazel run //python:requirements_update" + (f" -- {chosen[0]}" if chosen else "")
    env = dict(os.environ, CUSTOM_COMPILE_COMMAND=command)
    return subprocess.call(cmd, cwd=python_dir, env=env)


if __name__ == "__main__":
    sys.exit(main())
