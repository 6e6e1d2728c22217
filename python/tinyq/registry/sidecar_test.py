"""tinyq.registry.sidecar.read against the vectors the C++ parser is tested on (cc/sidecar_test.cc)."""

import json
import os
import threading
from pathlib import Path

import pytest

from tinyq.registry import sidecar

VECTORS = Path("tests/vectors/sidecars")
CASES = sorted(p.name[: -len(".expect.json")] for p in VECTORS.glob("*.expect.json"))


def test_there_are_vectors():
    assert len(CASES) >= 20


@pytest.mark.parametrize("name", CASES)
def test_vector(name, tmp_path):
    expect = json.loads((VECTORS / f"{name}.expect.json").read_text())
    path = VECTORS / f"{name}.json"
    if "generate_bytes" in expect:
        path = tmp_path / f"{name}.json"
        if expect.get("generate_sparse"):  # a sparse file: a size to report, not to read
            with open(path, "wb") as f:
                f.truncate(expect["generate_bytes"])
        else:
            path.write_bytes(b" " * expect["generate_bytes"])
    if expect["status"] != "ok":
        with pytest.raises(sidecar.SidecarError) as e:
            sidecar.read(path)
        assert e.value.code == expect["status"], str(e.value)
        assert str(path) in str(e.value)
        assert expect.get("message_contains", "") in str(e.value)
        return
    sc = sidecar.read(path)
    checks = {
        "quant_mode": sc.quant_mode,
        "warning": bool(sc.warnings),
        "opset": sc.opset,
        "id": sc.id,
        "budget": sc.quant_accuracy_budget_plcc,
        "n_features": len(sc.features),
        "n_params": sc.n_params,
        "has_int8_sha256": sc.int8_sha256 is not None,
        "input_names": [n for n, _ in sc.inputs],
        "input_shapes": [s for _, s in sc.inputs],
        "output_names": [n for n, _ in sc.outputs],
        "output_shapes": [s for _, s in sc.outputs],
    }
    for key, value in expect.items():
        if key not in ("status", "message_contains"):
            assert checks[key] == value, key


def test_every_shipped_sidecar_reads():
    for path in Path("model/tiny").glob("*.json"):
        if path.name == "registry.json" or "schema" in path.name:
            continue
        sc = sidecar.read(path)
        assert sc.opset == 17 and sc.quant_mode != "fp32" and sc.int8_sha256 and sc.inputs


def test_missing_file_is_an_io_error(tmp_path):
    with pytest.raises(sidecar.SidecarError) as e:
        sidecar.read(tmp_path / "none.json")
    assert e.value.code == "io_error"


def _promptly(call, fifo):
    """call() in a thread, which must finish within 5 s; a reader blocked on the FIFO (the bug) is
    released by opening it for writing, so a regression fails instead of hanging."""
    result = {}
    t = threading.Thread(target=lambda: result.update(value=_capture(call)), daemon=True)
    t.start()
    t.join(5)
    blocked = t.is_alive()
    while t.is_alive():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        t.join(0.1)
    assert not blocked, f"blocked on {fifo}"
    return result["value"]


def _capture(call):
    try:
        return call()
    except Exception as e:  # returned, to be checked by the caller
        return e


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    e = _promptly(lambda: sidecar.read(fifo), fifo)
    assert isinstance(e, sidecar.SidecarError) and e.code == "io_error", e
    assert f"{fifo}: not a regular file (a FIFO)" in str(e)


def test_a_directory_and_a_device_are_refused(tmp_path):
    with pytest.raises(sidecar.SidecarError) as e:
        sidecar.read(tmp_path)
    assert e.value.code == "io_error" and f"{tmp_path}: not a regular file (a directory)" in str(e.value)
    with pytest.raises(sidecar.SidecarError) as e:
        sidecar.read(Path("/dev/zero"))
    assert e.value.code == "io_error" and "not a regular file (a character device)" in str(e.value)


def test_oversize_from_memory_reports_its_size():
    with pytest.raises(sidecar.SidecarError) as e:
        sidecar.parse(b" " * (sidecar.MAX_SIDECAR_BYTES + 7))
    assert str(e.value) == "the sidecar is 1048583 bytes, larger than 1048576 bytes (1 MiB cap)"


def test_nesting_far_past_the_limit_is_refused():
    n = sidecar.MAX_SIDECAR_BYTES // 2 - 40
    with pytest.raises(sidecar.SidecarError) as e:
        sidecar.parse(b'{"id":"m","arch":' + b"[" * n + b"]" * n + b"}")
    assert e.value.code == "limit_exceeded" and "over the limit of 64" in str(e.value)
