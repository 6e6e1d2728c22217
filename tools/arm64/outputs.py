"""Runs inside the arm64 root (tools/arm64/make_root.sh): each model's first output on the `x` of
an .npz, saved as <model>.<label>.npy beside it, with the CPU features the process sees."""

import sys

import numpy as np
import onnxruntime as ort
from numpy._core._multiarray_umath import __cpu_features__ as features

label, data, models = sys.argv[1], sys.argv[2], sys.argv[3:]
print(label, "features:", " ".join(k for k in ("NEON", "ASIMD", "ASIMDDP", "SVE") if features.get(k)), "| onnxruntime", ort.__version__)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
with np.load(data) as f:
    x = f["x"]
for m in models:
    np.save(m[: -len(".onnx")] + f".{label}.npy", ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0])
