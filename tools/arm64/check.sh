#!/usr/bin/env bash
# The exact claim on ARM: arithmetic_test's saturating model (a bank of smooth positive kernels,
# bright inputs), unfixed and fixed, through onnxruntime on an emulated Cortex-A53 (no dot product)
# and an emulated core with dot products (-cpu max), against this machine's exact and avx2 rows.
#   tools/arm64/check.sh [ROOT]     (ROOT defaults to /var/tmp/tinyq-arm64; made when missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=${1:-/var/tmp/tinyq-arm64}
[[ -x "$root/usr/bin/python3.11" && -d "$root/opt/tinyq/site/onnxruntime" ]] || tools/arm64/make_root.sh "$root" >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv="$(tools/bazel info output_base 2>/dev/null)/external/tinyq_venv/venv/bin/python3"
PYTHONPATH=python "$venv" - "$work" <<'PY'
import sys
from pathlib import Path
import numpy as np, onnx
from tinyq.judge import arithmetic
from tinyq.quant import quantize
from tinyq.judge.arithmetic_test import _blur_bank
d, rng = Path(sys.argv[1]), np.random.default_rng(0)
model = _blur_bank()
onnx.save(model, str(d / "blur.onnx"))
calibration = {"x": rng.uniform(0, 1, (64, 1, 16, 16)).astype(np.float32)}
bright = {"x": rng.uniform(0.5, 1, (64, 1, 16, 16)).astype(np.float32)}
np.savez(d / "bright.npz", **bright)
for fix in ("none", "needed"):
    (d / f"{fix}.int8.onnx").write_bytes(quantize.quantize_static_qdq(model, calibration, overflow_fix=fix))
for name in ("blur", "none.int8", "needed.int8"):
    for a in arithmetic.ARITHMETICS:
        np.save(d / f"{name}.{a}.npy", arithmetic.run(str(d / f"{name}.onnx"), bright, a)[0])
PY
for cpu in cortex-a53 max; do
  PYTHONPATH="$root/opt/tinyq/site" qemu-aarch64 -L "$root" -cpu "$cpu" "$root/usr/bin/python3.11" \
    tools/arm64/outputs.py "$cpu" "$work/bright.npz" "$work"/blur.onnx "$work"/none.int8.onnx "$work"/needed.int8.onnx
done
"$venv" - "$work" <<'PY'
import sys
import numpy as np
d = sys.argv[1] + "/"
ref = np.load(d + "blur.exact.npy").ravel()
print("| int8 | exact (this CPU) | avx2 | arm64 cortex-a53 | arm64 max | cortex-a53 = exact | max = exact |")
print("|---|---|---|---|---|---|---|")
for name in ("none.int8", "needed.int8"):
    out = {k: np.load(f"{d}{name}.{k}.npy") for k in ("exact", "avx2", "cortex-a53", "max")}
    drop = {k: 1 - np.corrcoef(ref, v.ravel())[0, 1] for k, v in out.items()}
    same = [bool(np.array_equal(out[k], out["exact"])) for k in ("cortex-a53", "max")]
    print(f"| {name} | {drop['exact']:.4e} | {drop['avx2']:.4e} | {drop['cortex-a53']:.4e} | {drop['max']:.4e} | "
          f"{same[0]} | {same[1]} |")
PY
