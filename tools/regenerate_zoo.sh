#!/usr/bin/env bash
# Regenerates the whole zoo from scratch: both corpora, seven trained models, calibration,
# validation and soak sets, and the committed QAT int8 artefacts (models whose model/zoo.bzl
# recipe is "qat"; none today), printing the wall time of each step. Every step is seeded: the
# same machine gives the same files. The other int8 artefacts are Bazel genrules of the fp32
# models; //model:int8_pins_test rebuilds them and checks their pins.
#
# Usage: tools/regenerate_zoo.sh [--only-restoration] [--check]
#   --only-restoration  only the restoration corpus and learned_filter_v2
#   --check             then fail (exit 1) if any regenerated file differs from the committed one,
#                       or if the rebuilt int8 artefacts differ from their pins
set -euo pipefail
cd "$(dirname "$0")/.."

ONLY_RESTORATION=0
CHECK=0
for arg in "$@"; do
  case "$arg" in
    --only-restoration) ONLY_RESTORATION=1 ;;
    --check) CHECK=1 ;;
    *) echo "regenerate_zoo: unknown argument $arg; see the usage at the top of $0" >&2; exit 2 ;;
  esac
done

VQ_MODELS=(vmaf_tiny_v2 vmaf_tiny_v3 vmaf_tiny_v4 nr_metric_v1 fr_patch_v1 learned_filter_v1)
QAT_MODELS=()  # ZOO_INT8 mode "qat": trained outside the build, committed, pinned
TIMES=docs/models/reports/regenerate_times.txt
[[ $ONLY_RESTORATION == 1 ]] && TIMES=docs/models/reports/regenerate_restoration_times.txt
mkdir -p docs/models/reports
total_start=$SECONDS

step() {
  local name=$1; shift
  local start=$SECONDS
  "$@"
  echo "regenerate_zoo: ${name} took $((SECONDS - start)) s" | tee -a "$TIMES"
}

: > "$TIMES"
if [[ $ONLY_RESTORATION == 0 ]]; then
  step build_corpus_vq tools/bazel run //python:build_corpus -- --kind=vq --jobs=2
  for id in "${VQ_MODELS[@]}"; do
    step "train_${id}" tools/bazel run "//python:train_${id}" -- "--report-out=$PWD/docs/models/reports/${id}.train.json"
  done
fi
step build_corpus_restoration tools/bazel run //python:build_corpus -- --kind=restoration --jobs=2
step train_learned_filter_v2 tools/bazel run //python:train_learned_filter_v2 -- \
  "--report-out=$PWD/docs/models/reports/learned_filter_v2.train.json"
if [[ $ONLY_RESTORATION == 0 ]]; then
  step build_calibration_set tools/bazel run //python:build_calibration_set
else
  step build_calibration_set tools/bazel run //python:build_calibration_set -- --models=learned_filter_v2
fi
for id in "${QAT_MODELS[@]+"${QAT_MODELS[@]}"}"; do
  step "qat_train_${id}" tools/bazel run //python:qat_train -- "--config=$PWD/python/configs/${id}_qat.yaml" \
    "--output=$PWD/model/tiny/${id}.int8.onnx" "--report-out=$PWD/docs/models/reports/${id}.qat.json"
done
echo "regenerate_zoo: total $((SECONDS - total_start)) s" | tee -a "$TIMES"
tools/bazel run //python:validate_registry

if [[ $CHECK == 1 ]]; then
  # Byte-identical or not: the corpora, models, sidecars, registry and held-out sets.
  if git diff --quiet -- model/corpus model/tiny; then
    echo "regenerate_zoo: every regenerated file is byte-identical to the committed one"
    tools/bazel test //model:int8_pins_test
  else
    git diff --stat -- model/corpus model/tiny >&2
    echo "regenerate_zoo: the files above differ from the committed ones" >&2
    exit 1
  fi
fi
