#!/usr/bin/env bash
# Regenerates the whole zoo from scratch: corpus, six trained models, calibration sets and soak
# fixtures, printing the wall time of each step. Every step is seeded: the same machine gives the
# same files. Usage: tools/regenerate_zoo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=(vmaf_tiny_v2 vmaf_tiny_v3 vmaf_tiny_v4 nr_metric_v1 fr_patch_v1 learned_filter_v1)
mkdir -p docs/models/reports
total_start=$SECONDS

step() {
  local name=$1; shift
  local start=$SECONDS
  "$@"
  echo "regenerate_zoo: ${name} took $((SECONDS - start)) s" | tee -a docs/models/reports/regenerate_times.txt
}

: > docs/models/reports/regenerate_times.txt
step build_corpus tools/bazel run //python:build_corpus -- --jobs=2
for id in "${MODELS[@]}"; do
  step "train_${id}" tools/bazel run "//python:train_${id}" -- "--report-out=$PWD/docs/models/reports/${id}.train.json"
done
step build_calibration_set tools/bazel run //python:build_calibration_set
echo "regenerate_zoo: total $((SECONDS - total_start)) s" | tee -a docs/models/reports/regenerate_times.txt
tools/bazel run //python:validate_registry
