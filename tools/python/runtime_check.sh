#!/usr/bin/env bash
# The lean runtime toolchain (--config=runtime, python/requirements_runtime.in) builds the pinned
# int8 artefacts and passes the zoo's gate tests without torch. Prints "runtime check: NAME
# PASSED|FAILED" lines; exits non-zero if any failed. Run from the workspace root: .ci/run calls it.
set -uo pipefail
cd "$(dirname "$0")/../.."
failures=0
check() {  # check NAME COMMAND...: one line per check
  local name=$1
  shift
  if "$@"; then echo "runtime check: $name PASSED"; else echo "runtime check: $name FAILED"; failures=$((failures + 1)); fi
}
# Every //model test on the lean venv: the int8 genrules it depends on, the pins, the gates.
check model_tests tools/bazel test --config=runtime //model/...
runtime="$(tools/bazel info output_base 2>/dev/null)/external/tinyq_venv_runtime"
no_torch() {
  local size
  size=$(du -sm "$runtime/venv" | cut -f1)
  echo "runtime venv: ${size} MB (the full venv: $(du -sm "${runtime%_runtime}/venv" | cut -f1) MB)"
  ! "$runtime/python" -c "import torch" 2>/dev/null && "$runtime/python" -c "import onnxruntime, onnx, numpy"
}
check no_torch no_torch
exit $((failures > 0))
