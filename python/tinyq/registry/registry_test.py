"""tinyq.registry.registry: a valid tree loads; each bad input gets its own finding code and pointer."""

import json
import os
import shutil
from pathlib import Path

import pytest

from tinyq.registry import registry
from tinyq_testing import testutil


@pytest.fixture
def tree(tmp_path):
    return testutil.make_tree(tmp_path)


def test_valid_tree_loads_with_defaults_applied(tree):
    reg = registry.load(tree)
    assert [m.id for m in reg.models] == ["m_fp32", "m_dyn", "m_static"]
    assert [m.id for m in reg.quantised()] == ["m_dyn", "m_static"]
    fp32 = reg.get("m_fp32")
    assert fp32.quant_mode == "fp32" and fp32.budget_plcc == 0.01 and fp32.int8_sha256 is None
    static = reg.get("m_static")
    assert static.calibration_set == tree.parent / "calibration" / "m_static.npz"
    assert static.int8_onnx == tree.parent / "m_static.int8.onnx"
    assert static.sidecar == tree.parent / "m_static.json"
    with pytest.raises(KeyError, match="no model with id 'nope'"):
        reg.get("nope")


def test_absent_quant_mode_and_budget_default(tree):
    testutil.edit_registry(tree, lambda d: [d["models"][0].pop(k) for k in ("quant_mode",)])
    sidecar = tree.parent / "m_fp32.json"
    data = json.loads(sidecar.read_text())
    data.pop("quant_mode")
    sidecar.write_text(json.dumps(data))
    reg = registry.load(tree)
    assert reg.get("m_fp32").quant_mode == "fp32"


@pytest.mark.parametrize("case", testutil.BAD_CASES, ids=[c.name for c in testutil.BAD_CASES])
def test_bad_input_has_its_own_finding(tree, case):
    case.mutate(tree)
    _, findings = registry.check(tree)
    assert findings, f"{case.name}: no finding"
    codes = [(f.code, f.pointer) for f in findings]
    assert (case.code, case.pointer) in codes, codes
    for f in findings:
        assert f.message and f.fix
        line = f.format(tree)
        assert str(tree) in line and f"[{f.code}]" in line and "Fix:" in line
    with pytest.raises(registry.RegistryInvalid):
        registry.load(tree, strict=True)
    if case.code in registry.WARNING_CODES:
        assert registry.load(tree).get("m_dyn")  # a warning alone leaves the registry usable
    else:
        with pytest.raises(registry.RegistryInvalid):
            registry.load(tree)


def test_each_bad_case_is_a_distinct_code():
    # Every check the issue lists maps to its own code, so users and tests can tell them apart.
    codes = {c.code for c in testutil.BAD_CASES}
    assert {
        "malformed_json", "wrong_type", "unknown_quant_mode", "path_escape", "sha256_mismatch",
        "calibration_set_missing", "int8_sha256_missing", "sidecar_missing", "duplicate_id",
    } <= codes


def test_finding_names_the_entry_id(tree):
    testutil.edit_registry(tree, lambda d: d["models"][1].update(quant_mode="int4"))
    _, findings = registry.check(tree)
    assert findings[0].entry == "m_dyn"


def test_entry_without_id_is_named_by_index(tree):
    testutil.edit_registry(tree, lambda d: d["models"][2].pop("id"))
    _, findings = registry.check(tree)
    assert ("missing_field", "models[2]", "/models/2/id") in [(f.code, f.entry, f.pointer) for f in findings]


def test_missing_registry_is_a_read_error(tmp_path):
    with pytest.raises(registry.RegistryReadError, match="registry not found"):
        registry.check(tmp_path / "nope.json")


def test_non_utf8_registry_is_malformed(tree):
    tree.write_bytes(b'{"models": ["\xff"]}')
    _, findings = registry.check(tree)
    assert [f.code for f in findings] == ["malformed_json"]


def test_symlink_inside_the_directory_is_allowed(tree):
    # A link that stays inside model/tiny/ is not an escape.
    (tree.parent / "sub").mkdir()
    shutil.move(tree.parent / "m_fp32.onnx", tree.parent / "sub" / "m_fp32.onnx")
    (tree.parent / "m_fp32.onnx").symlink_to(tree.parent / "sub" / "m_fp32.onnx")
    _, findings = registry.check(tree)
    assert findings == []


def test_reference_registry_fields_validate_unchanged(tree):
    """Every field of the reference toolkit's registry is accepted; an absent sigstore bundle is fine."""

    def add_reference_fields(d):
        d["models"][0].update(
            notes="trained on the reference corpus",
            smoke=False,
            license="BSD-2-Clause-Patent",
            license_url="https://example.invalid/LICENSE",
            sigstore_bundle="m_fp32.onnx.sigstore.json",
            description="tiny fr MLP",
            quant_accuracy_budget_plcc=0.01,
        )

    testutil.edit_registry(tree, add_reference_fields)
    assert registry.check(tree)[1] == []


def test_unknown_field_is_reported(tree):
    testutil.edit_registry(tree, lambda d: d["models"][0].update(qaunt_mode="dynamic"))
    _, findings = registry.check(tree)
    assert [f.code for f in findings] == ["unknown_field"]


def test_sidecar_onnx_opset_alias_is_compared(tree):
    sidecar = tree.parent / "m_fp32.json"
    data = json.loads(sidecar.read_text())
    data["onnx_opset"] = data.pop("opset") + 1
    sidecar.write_text(json.dumps(data))
    _, findings = registry.check(tree)
    assert [(f.code, f.pointer) for f in findings] == [("sidecar_mismatch", "/models/0/opset")]


def test_shipped_registry_is_valid():
    reg = registry.load(Path("model/tiny/registry.json"))
    assert reg.path.name == "registry.json"


def test_a_key_given_twice_is_refused(tree):
    """json.loads keeps the last of two equal keys silently; the registry, the trust root, refuses it."""
    text = tree.read_text()
    tree.write_text(text.replace('"quant_mode": "dynamic"', '"quant_mode": "fp32", "quant_mode": "dynamic"', 1))
    assert '"quant_mode": "fp32", "quant_mode": "dynamic"' in tree.read_text()
    reg, findings = registry.check(tree)
    assert reg is None and [f.code for f in findings] == ["duplicate_key"] and "'quant_mode'" in findings[0].message


@pytest.mark.parametrize("edit, valid", [
    (lambda raw: b"\xef\xbb\xbf" + raw, True),  # one leading BOM: both parsers accept it
    (lambda raw: raw.replace(b'"id":', b'"id": "x", "id":', 1), False),  # duplicate key
    (lambda raw: raw.replace(b'"onnx": "m_dyn.onnx"', b'"onnx": "../m_dyn.onnx"', 1), False),  # climbs out
])
def test_sidecars_are_read_with_the_native_parsers_rules(tree, edit, valid):
    """validate_registry passes a sidecar exactly when cc/tinyq/sidecar.cc and tinyq.registry.sidecar would."""
    side = tree.parent / "m_dyn.json"
    side.write_bytes(edit(side.read_bytes()))
    _, findings = registry.check(tree)
    bad = [f for f in findings if f.code == "sidecar_invalid"]
    assert (bad == []) == valid, bad


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_budget_that_is_not_a_finite_number_is_refused(tree, value):
    """Python's json reads NaN and Infinity, and 1e999 as inf; the schema's bounds pass NaN."""
    text = tree.read_text()
    assert '"quant_mode": "dynamic"' in text
    tree.write_text(text.replace('"quant_mode": "dynamic"', f'"quant_mode": "dynamic", "quant_accuracy_budget_plcc": {value}', 1))
    reg, findings = registry.check(tree)
    assert reg is None and [f.code for f in findings] == ["malformed_json"] and value in findings[0].message


def test_a_file_named_twice_is_a_finding(tree):
    """Entry m_fp32's model named like m_dyn's pinned int8: pinning m_dyn would replace it."""
    data = json.loads(tree.read_text())
    (tree.parent / "m_fp32.onnx").rename(tree.parent / "other.onnx")
    data["models"][0]["onnx"] = "m_dyn.int8.onnx"
    data["models"][0]["sha256"] = data["models"][1]["int8_sha256"]
    tree.write_text(json.dumps(data))
    _, findings = registry.check(tree)
    twice = [f for f in findings if f.code == "file_named_twice"]
    assert [(f.entry, f.pointer) for f in twice] == [("m_dyn", "/models/1/onnx")], findings
    assert "m_dyn.int8.onnx is the pinned int8 artefact of 'm_dyn' and also the fp32 model of 'm_fp32'" in twice[0].message


def test_a_calibration_set_named_explicitly_and_by_its_id_is_one_role(tree):
    data = json.loads(tree.read_text())
    assert data["models"][2]["quant_calibration_set"] == "calibration/m_static.npz"
    _, findings = registry.check(tree)
    assert not [f for f in findings if f.code == "file_named_twice"]


@pytest.mark.parametrize("how", ["symlink", "hard_link", "copy"])
def test_a_calibration_or_validation_set_that_is_a_soak_fixture_is_refused(tree, how):
    root = tree.parent
    fixture = root / "fixtures" / "m_static.soak.npz"
    for victim in (root / "calibration" / "m_static.npz", root / "validation" / "m_dyn.val.npz"):
        victim.parent.mkdir(exist_ok=True)
        victim.unlink(missing_ok=True)
        {"symlink": lambda: victim.symlink_to(fixture), "hard_link": lambda: os.link(fixture, victim),
         "copy": lambda: victim.write_bytes(fixture.read_bytes())}[how]()
    _, findings = registry.check(tree)
    reused = [(f.entry, f.pointer) for f in findings if f.code == "held_out_reused"]
    assert reused == [("m_dyn", "/models/1/id"), ("m_static", "/models/2/quant_calibration_set")], findings
    # A tool that makes choices (ptq_auto) opens no fixture: links are still caught, copies are left to validation.
    _, findings = registry.check(tree, read_held_out=False)
    assert len([f for f in findings if f.code == "held_out_reused"]) == (0 if how == "copy" else 2)


def test_implied_paths_that_lead_out_of_the_registry_are_escapes(tree, tmp_path):
    root, outside = tree.parent, tmp_path / "elsewhere"
    outside.mkdir()
    (root / "fixtures").rename(outside / "fixtures")
    (root / "fixtures").symlink_to(outside / "fixtures")
    settings = outside / "settings.json"
    settings.write_text('{"theme": "dark"}\n')
    (root / "m_fp32.json").unlink()
    (root / "m_fp32.json").symlink_to(settings)
    _, findings = registry.check(tree)
    escapes = sorted((f.entry, f.pointer, f.message.split(" leads to ")[0]) for f in findings if f.code == "path_escape")
    assert escapes == [("(registry)", "", "the folder fixtures/"), ("m_fp32", "/models/0/onnx", "its sidecar m_fp32.json")]


JAIL_CASES = json.loads(Path("tests/vectors/jail/cases.json").read_text())["cases"]


def lay_out_jail_case(root: Path, case) -> Path:
    """tests/vectors/jail/cases.json's layout (the same as //cc:loader_test's): jail/ with the model,
    copies in jail/sub, jail/inner and outside/, then case['links']; returns the registry's path."""
    src = Path("tests/vectors/loader/int8_verified")
    for d in ("jail", "jail/sub", "jail/inner", "outside"):
        (root / d).mkdir(parents=True)
        for name in ("model.onnx", "model.int8.onnx", "model.json"):
            shutil.copyfile(src / name, root / d / name)
    for name, target in case["links"].items():
        link = root / "jail" / name
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink(missing_ok=True)
        link.symlink_to(str(root / target[1:]) if target.startswith("@") else target)
    side = json.loads((src / "model.json").read_text())
    entry = {"id": "model", "kind": "fr", "onnx": case.get("onnx", "model.onnx"), "quant_mode": "dynamic",
             "sha256": side["sha256"], "int8_sha256": side["int8_sha256"]}
    reg = root / "jail" / "registry.json"
    reg.write_text(json.dumps({"models": [entry]}))
    return reg


@pytest.mark.parametrize("case", JAIL_CASES, ids=[c["name"] for c in JAIL_CASES])
def test_the_jail_rule_shared_with_the_native_resolver(case, tmp_path):
    """One rule, two languages: a path escape exactly where tinyq_resolve --jail refuses one."""
    reg = lay_out_jail_case(tmp_path, case)
    _, findings = registry.check(reg)
    escapes = [f.format(reg) for f in findings if f.code == "path_escape"]
    assert bool(escapes) == case["escapes"], escapes or findings
