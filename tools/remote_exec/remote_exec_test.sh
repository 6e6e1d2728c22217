#!/usr/bin/env bash
# Remote execution end to end, on loopback with Bazel's own remote worker (tools/remote_exec/worker.sh):
# a fresh clone of HEAD, with its own output base, builds //model:all_int8 and runs //model's tests
# with --config=remote-exec. Prints "remote-exec check: NAME PASSED|FAILED" per check:
#   all_int8_remote          every quantiser ran on the worker (--execution_log_json_file), none locally
#   artefacts_equal_pins     the int8 files it built equal the registry's pins
#   gates_remote             //model's tests pass, every gate test ran on the worker
#   image_has_no_host_venv   an action sees the image, not the host: no host venv, no torch
#   worker_restart_survived  a worker stopped and started again mid-build: the build retries and passes
# Exits non-zero if any check failed.
set -uo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
[[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ]] || { echo "remote_exec_test: commit first" >&2; exit 2; }
tmp=$(mktemp -d /tmp/tinyq-remote-exec-test.XXXXXX)
state=$tmp/state clone=$tmp/clone ob=$tmp/output_base
cleanup() {
  "$repo/tools/remote_exec/worker.sh" stop --state "$state" 2>/dev/null
  [[ -x "$clone/tools/bazel" ]] && (cd "$clone" && tools/bazel --output_base="$ob" shutdown) >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
result() {  # result NAME RC [DETAIL]
  if [[ $2 -eq 0 ]]; then echo "remote-exec check: $1 PASSED${3:+ ($3)}"; else echo "remote-exec check: $1 FAILED${3:+ ($3)}"; failures=$((failures + 1)); fi
}
bz() { (cd "$clone" && TINYQ_REMOTE_EXECUTOR=$url tools/bazel --output_base="$ob" "$@"); }

git clone --quiet "$repo" "$clone" && git -C "$clone" checkout --quiet "$(git -C "$repo" rev-parse HEAD)"
url=$("$repo/tools/remote_exec/worker.sh" start --state "$state" | tail -n 1)
port=${url##*:}
echo "remote_exec_test: worker at $url"

bz build --config=remote-exec --execution_log_json_file="$tmp/build.json" //model:all_int8
rc=$?
read -r q_remote q_other _ _ < <(python3 "$repo/tools/remote_cache/check.py" executed "$tmp/build.json" 2>/dev/null || echo "0 0 0 0")
result all_int8_remote $((rc != 0 || q_remote == 0 || q_other != 0)) "$q_remote quantisers remote, $q_other elsewhere"
pins=$(python3 "$repo/tools/remote_cache/check.py" pins "$clone" 2>&1)
result artefacts_equal_pins $? "$pins"

bz test --config=remote-exec --execution_log_json_file="$tmp/test.json" //model/...
rc=$?
read -r _ _ g_remote g_other < <(python3 "$repo/tools/remote_cache/check.py" executed "$tmp/test.json" 2>/dev/null || echo "0 0 0 0")
result gates_remote $((rc != 0 || g_remote == 0 || g_other != 0)) "$g_remote gate tests remote, $g_other elsewhere"

# What an action sees: the image's root, not the host's (its venv, its output base, torch).
image=$(ls -d "$state"/images/*/ | head -n 1)
probe=$tmp/probe && mkdir -p "$probe"
TINYQ_WORKER_IMAGES=$state/images "$repo/tools/remote_exec/docker" run -v "$probe:$probe-docker" -w "$probe-docker" \
  -e PATH=/usr/bin:/bin "$("$repo/tools/remote_exec/image.sh" --name)" /bin/sh -c \
  "test ! -e '$ob' && test ! -e '$repo' && test ! -e /root/.cache/bazel && ! /opt/tinyq/python -c 'import torch' 2>/dev/null"
rc=$?
found=$(find "$image" -xdev \( -name 'tinyq_venv*' -o -path '*/site-packages/torch' \) -print -quit)
result image_has_no_host_venv $((rc != 0 || ${#found} != 0)) "$(du -sm "$image" | cut -f1) MB image${found:+; found $found}"

# A worker that goes away mid-build: stop it while the gate tests run, start it again on its port.
bz test --config=remote-exec --noremote_accept_cached --nocache_test_results \
  //model:vmaf_tiny_v2_gate_test //model:vmaf_tiny_v3_gate_test //model:vmaf_tiny_v4_gate_test >"$tmp/restart.log" 2>&1 &
build=$!
for _ in $(seq 150); do ls "$state"/w1/work/* >/dev/null 2>&1 && break; sleep 0.2; done
busy=$(ls "$state"/w1/work 2>/dev/null | wc -l)
"$repo/tools/remote_exec/worker.sh" stop --state "$state"
sleep 3
"$repo/tools/remote_exec/worker.sh" start --state "$state" --port "$port" >/dev/null
wait "$build"
rc=$?
result worker_restart_survived $((rc != 0 || busy == 0)) "stopped with $busy action(s) running; the build exited $rc"
[[ $rc -eq 0 ]] || tail -n 30 "$tmp/restart.log"
exit $((failures > 0))
