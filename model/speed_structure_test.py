"""Every int8 artefact meant for speed runs every compute op as an int8 kernel.

A structural check, stable on any machine: in onnxruntime's optimised graph no Conv, Gemm,
MatMul, Add, Mul, pool or Concat may still run in fp32 on DequantizeLinear outputs. Timing is
never asserted here; `measure_quant_drop --speed-gate` times artefacts on the machine at hand.
"""

from pathlib import Path

import pytest

from tinyq import auto, registry, starlark

RECIPES = starlark.constant(Path("model/zoo.bzl"), "ZOO_INT8")
REG = registry.load(Path("model/tiny/registry.json"))
SPEED = sorted(m for m, r in RECIPES.items() if r.get("purpose") == "speed")


def test_every_recipe_states_its_purpose_as_the_registry_does():
    for model_id, recipe in RECIPES.items():
        assert recipe.get("purpose") in ("speed", "size"), f"{model_id}: recipe purpose {recipe.get('purpose')!r}"
        raw = REG.get(model_id).raw
        assert raw.get("quant_purpose") == recipe["purpose"], f"{model_id}: registry quant_purpose {raw.get('quant_purpose')!r}"
        assert raw.get("quant_encoding") == recipe["encoding"], f"{model_id}: registry quant_encoding {raw.get('quant_encoding')!r}"


@pytest.mark.parametrize("model_id", SPEED)
def test_speed_artefact_runs_fully_fused(model_id):
    built = Path("model/int8") / f"{model_id}.int8.onnx"
    unfused = auto.fusion(built.read_bytes())
    assert unfused == [], f"{model_id}: {len(unfused)} compute ops run unfused in fp32 ({unfused}); it cannot be a speed artefact"


def test_a_weight_only_artefact_would_fail_the_check():
    # The check has teeth: weight-only int8 keeps compute ops on DequantizeLinear outputs.
    size = [m for m, r in RECIPES.items() if r["args"] == ["--encoding=weight_only"]]
    if not size:
        pytest.skip("no weight-only artefact in the zoo")
    assert auto.fusion((Path("model/int8") / f"{size[0]}.int8.onnx").read_bytes())
