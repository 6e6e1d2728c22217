"""--help exits 0 on every tool, with its usage on stdout; the C++ tinyq_resolve included."""

import os
import subprocess
from pathlib import Path

import pytest

TOOLS = [
    "python/validate_registry", "python/ptq_dynamic", "python/ptq_static", "python/ptq_auto", "python/register_model",
    "python/measure_quant_drop", "python/measure_quant_drop_per_ep", "python/build_corpus", "python/train_model",
    "python/build_calibration_set", "python/build_shift_set", "python/evaluate_zoo", "python/compare_filters", "python/bench_ptq", "python/bench_peers", "python/bench_user_cnn", "python/bench_depthwise_cnn",
    "python/qat_train",
    "python/requirements_update", "model/update_pins", "cc/tinyq_resolve",
]


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0(tool, flag):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    r = subprocess.run([str(Path.cwd() / tool), flag], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "usage" in r.stdout.lower() and "Traceback" not in r.stderr, r.stdout + r.stderr
