"""ptq_static's time against graph size: a MatMul and N Relu nodes (each folds into its producer),
quantised by the tinyq sources at each given python/ directory, runs interleaved.

  tools/bazel run //tools/bench:ptq_chain -- --sizes 500,1000,2000,5000 --sources python,/tmp/old/python

Prints one row per size: seconds per source, from one process each, one thread.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from absl import app, flags
from onnx import TensorProto, helper, numpy_helper

_SIZES = flags.DEFINE_list("sizes", ["500", "1000", "2000", "5000"], "Relu nodes in the chain.")
_SOURCES = flags.DEFINE_list("sources", ["python"], "python/ directories holding ptq_static.py and tinyq.")


def chain(n: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["t0"])] + [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"])
                                                               for i in range(n)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, [None, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def seconds(source: Path, model: Path, calibration: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, str(source / "ptq_static.py"), str(model), "--calibration", str(calibration),
                    "--output", str(out)], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv):
    root = Path(os.environ.get("BUILD_WORKSPACE_DIRECTORY", "."))
    sources = [(root / s).resolve() for s in _SOURCES.value]
    with tempfile.TemporaryDirectory() as tmp:
        calibration = Path(tmp) / "calib.npz"
        np.savez(calibration, x=np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32))
        print("| Relu nodes | " + " | ".join(f"{s} (s)" for s in _SOURCES.value) + " | same bytes |")
        print("|---:|" + "---:|" * len(sources) + "---|")
        for n in map(int, _SIZES.value):
            model = Path(tmp) / f"chain{n}.onnx"
            onnx.save(chain(n), str(model))
            outs = [Path(tmp) / f"out{i}.onnx" for i in range(len(sources))]
            times = [seconds(s, model, calibration, o) for s, o in zip(sources, outs)]
            same = len({o.read_bytes() for o in outs}) == 1
            print(f"| {n} | " + " | ".join(f"{t:.2f}" for t in times) + f" | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    app.run(main)
