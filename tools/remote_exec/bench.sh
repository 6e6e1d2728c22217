#!/usr/bin/env bash
# Wall time of `bazel test //model/...` (the int8 artefacts and their gates) built locally, and
# through one and two local remote workers (tools/remote_exec/worker.sh), each from an empty cache
# (bazel clean, a fresh worker CAS), on a fresh clone of HEAD. Also the critical path Bazel reports
# and the summed action time from the execution log, from which a pool of N machines is estimated
# as max(critical path, summed action time / N). Prints a Markdown table (docs/remote-execution.md).
#
# Usage: tools/remote_exec/bench.sh [--workers "1 2"]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
counts=${2:-"1 2"}
[[ "${1:-}" == "--workers" || -z "${1:-}" ]] || { echo "usage: bench.sh [--workers \"1 2\"]" >&2; exit 2; }
tmp=$(mktemp -d /tmp/tinyq-remote-exec-bench.XXXXXX)
clone=$tmp/clone ob=$tmp/output_base
trap '"$repo/tools/remote_exec/worker.sh" stop --state "$tmp/state" 2>/dev/null; (cd "$clone" && tools/bazel --output_base="$ob" shutdown) >/dev/null 2>&1; rm -rf "$tmp"' EXIT
git clone --quiet "$repo" "$clone" && git -C "$clone" checkout --quiet "$(git -C "$repo" rev-parse HEAD)"
bz() { (cd "$clone" && tools/bazel --output_base="$ob" "$@"); }
counts=${counts//,/ }
summed() {  # summed PROFILE: the seconds of every action in Bazel's JSON trace profile
  python3 -c '
import gzip, json, sys
events = json.load(gzip.open(sys.argv[1]))
events = events["traceEvents"] if isinstance(events, dict) else events
print(round(sum(e.get("dur", 0) for e in events if e.get("cat") == "action processing") / 1e6))' "$1"
}

run() {  # run LABEL [bazel flags...]: one timed run from an empty cache; prints a table row
  local label=$1 start end crit
  shift
  bz clean >/dev/null 2>&1
  start=$(date +%s.%N)
  bz test "$@" --nocache_test_results --profile="$tmp/$label.profile.gz" //model/... >"$tmp/$label.log" 2>&1
  end=$(date +%s.%N)
  crit=$(grep -o 'Critical Path: [0-9.]*s' "$tmp/$label.log" | tail -n 1 | grep -o '[0-9.]*')
  printf '| %s | %.0f | %.0f | %s |\n' "$label" "$(python3 -c "print($end - $start)")" "$crit" "$(summed "$tmp/$label.profile.gz")"
}

bz build --nobuild //model/... >/dev/null 2>&1  # repositories and analysis, not timed
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(grep -o -w -m1 'avx512_vnni\|avx_vnni' /proc/cpuinfo | head -n 1 || echo no VNNI)), $(nproc) cores; HEAD $(git -C "$repo" rev-parse --short HEAD)"
echo
echo "| build of //model/... | wall s | critical path s | summed action s |"
echo "|---|---|---|---|"
run local
for n in $counts; do
  url=$("$repo/tools/remote_exec/worker.sh" start --state "$tmp/state" --workers "$n" | tail -n 1)
  export TINYQ_REMOTE_EXECUTOR=$url
  bz build --config=remote-exec --nobuild //model/... >/dev/null 2>&1
  run "remote, $n worker(s)" --config=remote-exec
  "$repo/tools/remote_exec/worker.sh" stop --state "$tmp/state"
  rm -rf "$tmp/state/cas"
done
