"""Test helpers: a small, valid registry tree on disk, the bad inputs every validator must catch, and
small models built in code for the quantisers' tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tinyq.io.fileio import atomic_write_npz, sha256_file


# (bytes, the message a model loader gives for them): files named .onnx that are not ONNX models.
NOT_ONNX_FILES = [
    (b"", "is an empty file, not an ONNX model"),
    (b"this is just some text, not a model\n", r"not an ONNX model \(protobuf parse failed"),
    (bytes(range(256)) * 8, r"not an ONNX model \(protobuf parse failed"),
]
NOT_ONNX_IDS = ["empty", "text", "random"]


def tiny_mlp(seed: int, n_in: int = 6, hidden: int = 16) -> bytes:
    """A real ONNX MLP (MatMul-Add-Relu-MatMul-Add), opset 17, dynamic batch."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((n_in, hidden)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b0"),
        numpy_helper.from_array(rng.standard_normal((hidden, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(1).astype(np.float32), "b1"),
    ]
    nodes = [
        helper.make_node("MatMul", ["features", "w0"], ["h0"]),
        helper.make_node("Add", ["h0", "b0"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w1"], ["h3"]),
        helper.make_node("Add", ["h3", "b1"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tinyq-test")
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha256_file(path)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def int8_of(fp32: bytes) -> bytes:
    """A real int8 artefact of an fp32 model: tinyq's weight-only encoding."""
    from tinyq.quant import quantize

    return quantize.encode(onnx.load_from_string(fp32), "weight_only", per_channel=False).model_bytes


def make_tree(root: Path) -> Path:
    """Writes root/model/tiny/registry.json with an fp32, a dynamic and a static model, all valid:
    each quantised one with a real int8 artefact and a soak fixture."""
    tiny = root / "model" / "tiny"
    tiny.mkdir(parents=True)
    models: List[Dict[str, Any]] = []
    for seed, (mid, mode) in enumerate([("m_fp32", "fp32"), ("m_dyn", "dynamic"), ("m_static", "static")]):
        entry: Dict[str, Any] = {
            "id": mid,
            "kind": "fr",
            "onnx": f"{mid}.onnx",
            "opset": 17,
            "sha256": _write(tiny / f"{mid}.onnx", tiny_mlp(seed)),
            "quant_mode": mode,
        }
        if mode != "fp32":
            entry["int8_sha256"] = _write(tiny / f"{mid}.int8.onnx", int8_of(tiny_mlp(seed)))
            (tiny / "fixtures").mkdir(exist_ok=True)
            rng = np.random.default_rng(seed)
            atomic_write_npz(tiny / "fixtures" / f"{mid}.soak.npz",
                             {"features": rng.random((8, 6), dtype=np.float32), "target": rng.random(8, dtype=np.float32)})
        if mode == "static":
            calib = tiny / "calibration" / f"{mid}.npz"
            calib.parent.mkdir(exist_ok=True)
            np.savez(calib, features=np.zeros((4, 6), np.float32))
            entry["quant_calibration_set"] = f"calibration/{mid}.npz"
        models.append(entry)
        sidecar = {k: v for k, v in entry.items() if k != "quant_calibration_set"}
        sidecar.update(input_name="features", input_shape=[-1, 6], output_name="score", output_shape=[-1, 1])
        _write_json(tiny / f"{mid}.json", sidecar)
    registry = tiny / "registry.json"
    _write_json(registry, {"$schema": "./registry.schema.json", "schema_version": 1, "models": models})
    return registry


def edit_registry(registry: Path, fn: Callable[[Dict[str, Any]], None]) -> None:
    data = json.loads(registry.read_text())
    fn(data)
    _write_json(registry, data)


def _model(data: Dict[str, Any], mid: str) -> Dict[str, Any]:
    return next(m for m in data["models"] if m["id"] == mid)


def _set(mid: str, **fields: Any) -> Callable[[Path], None]:
    return lambda reg: edit_registry(reg, lambda d: _model(d, mid).update(fields))


def _drop(mid: str, field: str) -> Callable[[Path], None]:
    return lambda reg: edit_registry(reg, lambda d: _model(d, mid).pop(field))


def _malformed(reg: Path) -> None:
    reg.write_text('{"schema_version": 1, "models": [\n')


def _symlink_escape(reg: Path) -> None:
    outside = reg.parent.parent.parent / "outside.onnx"
    outside.write_bytes(tiny_mlp(7))
    link = reg.parent / "linked.onnx"
    os.symlink(outside, link)
    edit_registry(reg, lambda d: _model(d, "m_fp32").update(onnx="linked.onnx", sha256=sha256_file(outside)))


def _flip_byte(reg: Path) -> None:
    p = reg.parent / "m_fp32.onnx"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))


def _duplicate(reg: Path) -> None:
    edit_registry(reg, lambda d: d["models"].append(dict(_model(d, "m_fp32"))))


def _sidecar_mismatch(reg: Path) -> None:
    p = reg.parent / "m_dyn.json"
    sidecar = json.loads(p.read_text())
    sidecar["quant_mode"] = "static"
    _write_json(p, sidecar)


def _pin_int8_mlp(reg: Path, hidden: int) -> None:
    """Pins a tiny MLP as m_dyn's int8 artefact, in the registry and the sidecar."""
    p = reg.parent / "m_dyn.int8.onnx"
    p.write_bytes(tiny_mlp(9, hidden=hidden))
    edit_registry(reg, lambda d: _model(d, "m_dyn").update(int8_sha256=sha256_file(p)))
    sidecar = reg.parent / "m_dyn.json"
    data = json.loads(sidecar.read_text())
    data["int8_sha256"] = sha256_file(p)
    _write_json(sidecar, data)


def _int8_larger(reg: Path) -> None:
    _pin_int8_mlp(reg, hidden=64)


def _int8_nothing_quantised(reg: Path) -> None:
    _pin_int8_mlp(reg, hidden=2)  # fp32 weights only, smaller than the fp32 model


def _fixture_bad_key(reg: Path) -> None:
    atomic_write_npz(reg.parent / "fixtures" / "m_dyn.soak.npz", {"feats": np.zeros((4, 6), np.float32)})


class BadCase(NamedTuple):
    name: str
    mutate: Callable[[Path], None]
    code: str  # the Finding code the validator must report
    pointer: str  # JSON pointer of that finding


BAD_CASES = [
    BadCase("malformed_json", _malformed, "malformed_json", ""),
    BadCase("wrong_type_sha256", _set("m_fp32", sha256=12345), "wrong_type", "/models/0/sha256"),
    BadCase("wrong_type_opset", _set("m_dyn", opset="17"), "wrong_type", "/models/1/opset"),
    BadCase("unknown_quant_mode", _set("m_dyn", quant_mode="int4"), "unknown_quant_mode", "/models/1/quant_mode"),
    BadCase("path_escape_dotdot", _set("m_fp32", onnx="../../etc/m.onnx"), "path_escape", "/models/0/onnx"),
    BadCase("path_escape_absolute", _set("m_fp32", onnx="/etc/m.onnx"), "path_escape", "/models/0/onnx"),
    BadCase("path_escape_symlink", _symlink_escape, "path_escape", "/models/0/onnx"),
    BadCase("sha256_mismatch", _flip_byte, "sha256_mismatch", "/models/0/sha256"),
    BadCase("static_without_calibration", _drop("m_static", "quant_calibration_set"), "calibration_set_missing",
            "/models/2/quant_calibration_set"),
    BadCase("calibration_file_absent", _set("m_static", quant_calibration_set="calibration/none.npz"), "file_missing",
            "/models/2/quant_calibration_set"),
    BadCase("dynamic_without_int8_sha256", _drop("m_dyn", "int8_sha256"), "int8_sha256_missing", "/models/1/int8_sha256"),
    BadCase("int8_sha256_mismatch", _set("m_dyn", int8_sha256="0" * 64), "int8_sha256_mismatch", "/models/1/int8_sha256"),
    BadCase("int8_not_smaller", _int8_larger, "int8_not_smaller", "/models/1/quant_mode"),
    BadCase("missing_sidecar", lambda reg: (reg.parent / "m_dyn.json").unlink(), "sidecar_missing", "/models/1"),
    BadCase("sidecar_mismatch", _sidecar_mismatch, "sidecar_mismatch", "/models/1/quant_mode"),
    BadCase("duplicate_ids", _duplicate, "duplicate_id", "/models/3/id"),
    BadCase("int8_nothing_quantised", _int8_nothing_quantised, "int8_nothing_quantised", "/models/1/quant_mode"),
    BadCase("fixture_missing", lambda reg: (reg.parent / "fixtures" / "m_static.soak.npz").unlink(), "fixture_missing",
            "/models/2"),
    BadCase("fixture_invalid", _fixture_bad_key, "fixture_invalid", "/models/1"),
]


def save_graph(path: Path, nodes, inputs, outputs, inits=(), opset: int = 17) -> Path:
    """A checked opset-`opset` ONNX model of these nodes, saved at path."""
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def int8_stand_in(path: Path) -> Path:
    """Rewrites the model at path, in place, into a hand-made "int8" that computes exactly what it
    did: a DequantizeLinear whose output nothing reads is added, so the gate, which refuses an int8
    that quantises nothing, judges it. For gate tests that need exact, chosen outputs."""
    model = onnx.load(str(path))
    model.graph.initializer.extend([numpy_helper.from_array(np.zeros(1, np.int8), "stand_in_q"),
                                    numpy_helper.from_array(np.array(1.0, np.float32), "stand_in_scale")])
    model.graph.node.append(helper.make_node("DequantizeLinear", ["stand_in_q", "stand_in_scale"], ["stand_in_unused"]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def floats(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def const(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def within(seconds: float, fn: Callable[[], Any], fifos=()) -> Any:
    """fn()'s result (or its exception), or AssertionError when it is still running after `seconds`
    (a read blocked on a FIFO): each FIFO is then opened for writing and closed, so the blocked
    reader sees end of file, and a regression fails the test instead of hanging it."""
    import threading

    box: Dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        worker.join(seconds)
        raise AssertionError(f"still running after {seconds} s: blocked reading a FIFO?")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def npz_with_header(path: Path, name: str, shape, dtype: str = "<f4", data: bytes = b"") -> Path:
    """An .npz whose one entry has a real .npy header declaring `shape` and `dtype`, followed by only
    `data`: what a hostile file can declare without holding it."""
    import io
    import zipfile

    from numpy.lib import format as npy_format

    header = io.BytesIO()
    npy_format.write_array_header_2_0(header, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}.npy", header.getvalue() + data)
    return path


def if_model(then_w, else_w, top_w=None, opset: int = 17) -> onnx.ModelProto:
    """features [n, K] -> (MatMul by top_w, if given) -> Relu -> If(cond) whose branches each hold
    their own weight initialiser: then_w / else_w [K', N]. cond is a constant True initialiser."""
    def branch(name, w):
        w = np.asarray(w, np.float32)
        return helper.make_graph([helper.make_node("MatMul", ["h", f"{name}_w"], [f"{name}_y"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["n", w.shape[1]])],
                                 initializer=[numpy_helper.from_array(w, f"{name}_w")])

    then_w = np.asarray(then_w, np.float32)
    inits = [numpy_helper.from_array(np.array(True), "cond")]
    nodes = []
    k = then_w.shape[0]
    if top_w is not None:
        top_w = np.asarray(top_w, np.float32)
        inits.append(numpy_helper.from_array(top_w, "top_w"))
        nodes.append(helper.make_node("MatMul", ["features", "top_w"], ["h0"]))
        k = top_w.shape[0]
    nodes.append(helper.make_node("Relu", ["h0" if top_w is not None else "features"], ["h"]))
    nodes.append(helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", then_w), else_branch=branch("else", else_w)))
    graph = helper.make_graph(nodes, "if_model", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", then_w.shape[1]])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


# --- models for the quantisers' tests (quantize_test, ptq_test) ----------------------------------


def stale_value_info(path):
    """What torch.onnx.export can write: initialisers in value_info with static shapes, twice."""
    model = onnx.load(str(path))
    for t in model.graph.initializer:
        dims = [1] + list(t.dims[1:]) if len(t.dims) > 1 else [1]  # a stale, wrong shape
        vi = helper.make_tensor_value_info(t.name, TensorProto.FLOAT, dims)
        model.graph.value_info.extend([vi, vi])
    onnx.save(model, str(path))


def x64_precise_and_default_sessions(model_bytes):
    """Loads the model under default options and under session.x64quantprecision=1."""
    for value in ("0", "1"):
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.x64quantprecision", value)
        ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def small_cnn(seed=0, batch="n"):
    """Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm on [batch, 1, 16, 16]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n) for n, s in
             [("w1", (8, 1, 3, 3)), ("b1", (8,)), ("w2", (16, 8, 3, 3)), ("b2", (16,)), ("w3", (1, 16)), ("b3", (1,))]]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["score"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 16, 16])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch, 1])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
