"""The worker platform names the image that tools/remote_exec/image.sh builds from the runtime lock:
tinyq-runtime:<the lock's sha256, 16 hex digits>. A new lock without a new name would run actions
on an image with other packages under unchanged action keys."""

import hashlib
import re
from pathlib import Path


def test_the_platform_names_the_image_of_the_current_lock():
    lock = hashlib.sha256(Path("python/requirements_runtime_lock.txt").read_bytes()).hexdigest()[:16]
    named = re.search(r'WORKER_IMAGE = "tinyq-runtime:([0-9a-f]{16})"', Path("tools/remote_exec/BUILD.bazel").read_text())
    assert named, "tools/remote_exec/BUILD.bazel: WORKER_IMAGE not found"
    assert named.group(1) == lock, (f"tools/remote_exec/BUILD.bazel names image tinyq-runtime:{named.group(1)}, but the runtime "
                                    f"lock gives tinyq-runtime:{lock}: set WORKER_IMAGE to it")
