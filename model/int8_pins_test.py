"""Every int8 artefact Bazel builds is the one the registry and the sidecars pin.

When the build no longer reproduces a pin, the built artefact may come from a remote cache rather
than from this machine: the message says so, and how to tell (a build with cache reads off).
After an intentional change, `tools/bazel run //model:update_pins` pins what this machine builds.
"""

import json
from pathlib import Path

import pytest

from tinyq.app import starlark
from tinyq.io.fileio import sha256_file
from tinyq.registry import registry

RECIPES = starlark.constant(Path("model/zoo.bzl"), "ZOO_INT8")
REG = registry.load(Path("model/tiny/registry.json"))
FIX = "run `tools/bazel run //model:update_pins`"


def test_registry_modes_follow_the_recipes():
    for m in REG.models:
        want = RECIPES[m.id]["mode"] if m.id in RECIPES else "fp32"
        assert m.quant_mode == want, f"{m.id}: registry quant_mode {m.quant_mode}, recipe {want}; {FIX}"


@pytest.mark.parametrize("model_id", sorted(RECIPES))
def test_built_artefact_matches_its_pins(model_id):
    entry = REG.get(model_id)
    side = json.loads(entry.sidecar.read_text())
    committed = sha256_file(entry.int8_onnx)
    assert committed == entry.int8_sha256 == side["int8_sha256"], f"{model_id}: pins disagree; {FIX}"
    assert sha256_file(entry.onnx) == entry.sha256 == side["sha256"], f"{model_id}: fp32 pin; {FIX}"
    if RECIPES[model_id]["mode"] != "qat":
        built = Path("model/int8") / f"{model_id}.int8.onnx"
        assert sha256_file(built) == entry.int8_sha256, (
            f"{model_id}: the built int8 artefact is not the pinned one. If this build read a remote cache, the cache may "
            f"hold a stale or poisoned result: rebuild on this machine alone (`tools/bazel clean && tools/bazel test "
            f"--noremote_accept_cached //model:int8_pins_test`) before anything else. If that rebuild matches the pin, "
            f"the cache is wrong: tell its owner, and do not pin (update_pins refuses artefacts it does not rebuild "
            f"identically). If it still differs after an intentional change, {FIX} (it rebuilds locally)")
    assert entry.int8_onnx.stat().st_size < entry.onnx.stat().st_size
