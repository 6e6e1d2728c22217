#!/usr/bin/env bash
# The cold/warm numbers in docs/remote-cache.md: a second clone with the remote cache against one
# without, measured side by side in one run, on loopback.
#
#   tools/remote_cache/measure.sh
#
# 1. A first clone of HEAD fills a fresh cache: tools/bazel test --config=remote-cache //...
# 2. Two more clones of HEAD, each in its own directory with its own output base: "cache" reads
#    the cache (--config=remote-cache-ro, a developer machine), "local" has none. Step by step,
#    alternating between the two so both see the same machine load:
#      venv   tools/bazel build --nobuild //model:all_int8   (the repository rule; never cached)
#      build  tools/bazel build //model:all_int8
#      test   tools/bazel clean, then tools/bazel test //...   (clean keeps the venv)
# Prints a Markdown table on stdout; progress on stderr. Needs about 8 GB in $TMPDIR (four venvs'
# worth of output bases) and leaves nothing behind. Exit codes: 0 measured, 2 bad usage.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/tools/remote_cache
(($# == 0)) || { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tinyq-measure.XXXXXX")
cleanup() {
  "$here/server.sh" stop --state "$tmp/server" 2>/dev/null || true
  for c in first cache local; do
    if [[ -x "$tmp/$c/tools/bazel" ]]; then
      (cd "$tmp/$c" && tools/bazel --output_base="$tmp/ob-$c" shutdown) >/dev/null 2>&1 || true
    fi
  done
  chmod -R u+w "$tmp" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

rev=$(git -C "$repo" rev-parse HEAD)
for c in first cache local; do
  git clone --quiet "$repo" "$tmp/$c"
  git -C "$tmp/$c" checkout --quiet "$rev"
done
url=$("$here/server.sh" start --port auto --store "$tmp/store" --state "$tmp/server")

declare -A secs rcs procs
run() {  # run CLONE STEP ARGS...: times one tools/bazel command in CLONE
  local c=$1 step=$2
  shift 2
  local flags=()
  if [[ $c != local ]]; then flags=(--config=remote-cache-ro); fi
  if [[ $c == first ]]; then flags=(--config=remote-cache); fi
  echo "measure: [$c] tools/bazel $* ${flags[*]}" >&2
  local t0=$EPOCHREALTIME rc=0
  (cd "$tmp/$c" && TINYQ_REMOTE_CACHE=$url tools/bazel --output_base="$tmp/ob-$c" "$1" "${flags[@]}" "${@:2}") \
    >"$tmp/$c-$step.log" 2>&1 || rc=$?
  secs[$c-$step]=$(python3 -c "print(f'{$EPOCHREALTIME - $t0:.1f}')")
  rcs[$c-$step]=$rc
  procs[$c-$step]=$(grep -oE '[0-9]+ processes: .*' "$tmp/$c-$step.log" | tail -n 1 | sed 's/\.$//' || true)
}

run first fill test //...
echo "measure: the first clone filled the cache: ${procs[first-fill]} (exit ${rcs[first-fill]})" >&2
(cd "$tmp/first" && tools/bazel --output_base="$tmp/ob-first" shutdown) >/dev/null 2>&1

for step in venv build test; do
  for c in local cache; do
    case $step in
      venv) run "$c" venv build --nobuild //model:all_int8 ;;
      build) run "$c" build build //model:all_int8 ;;
      test)
        (cd "$tmp/$c" && tools/bazel --output_base="$tmp/ob-$c" clean) >/dev/null 2>&1
        run "$c" test test //...
        ;;
    esac
  done
done

ratio() { python3 -c "print(f'{($1) / ($2):.1f}x')"; }
cat <<EOF
Measured $(date -u +%Y-%m-%d) at $(git -C "$repo" rev-parse --short HEAD) on $(nproc) cores with \`tools/remote_cache/measure.sh\`; nginx on loopback.

| second clone, step | without a cache | with the remote cache | speed-up |
|---|---|---|---|
| venv (repository rule, never cached) | ${secs[local-venv]} s | ${secs[cache-venv]} s | — |
| \`tools/bazel build //model:all_int8\` | ${secs[local-build]} s | ${secs[cache-build]} s | $(ratio "${secs[local-build]}" "${secs[cache-build]}") |
| \`tools/bazel test //...\` (after \`clean\`) | ${secs[local-test]} s | ${secs[cache-test]} s | $(ratio "${secs[local-test]}" "${secs[cache-test]}") |
| fresh clone to \`test //...\` done (venv + test) | $(python3 -c "print(f'{${secs[local-venv]} + ${secs[local-test]}:.1f}')") s | $(python3 -c "print(f'{${secs[cache-venv]} + ${secs[cache-test]}:.1f}')") s | $(ratio "${secs[local-venv]} + ${secs[local-test]}" "${secs[cache-venv]} + ${secs[cache-test]}") |

Bazel's own count of what ran:

| step | without a cache | with the remote cache |
|---|---|---|
| build | ${procs[local-build]} (exit ${rcs[local-build]}) | ${procs[cache-build]} (exit ${rcs[cache-build]}) |
| test | ${procs[local-test]} (exit ${rcs[local-test]}) | ${procs[cache-test]} (exit ${rcs[cache-test]}) |

The first clone filled the cache with \`tools/bazel test --config=remote-cache //...\` in ${secs[first-fill]} s (venv included): ${procs[first-fill]} (exit ${rcs[first-fill]}).
EOF
