#!/usr/bin/env bash
# The remote cache across two clones, and its faults, on loopback with real nginx and real Bazel.
#
#   tools/remote_cache/two_clone_test.sh --store DIR
#
# DIR is an nginx store (tools/remote_cache/server.sh) that a first clone of this commit filled,
# from a fresh or clean output base, with `tools/bazel test --config=remote-cache` over
# //model:all_int8 and the gate tests (.ci/run's main run over //... does exactly that). The store
# itself is never changed: every server here serves a hard-linked copy, or an empty store.
#
# A second clone of HEAD, in a temporary directory with its own output base (so its own venv):
#   1. reads the cache: zero quantiser actions and zero gate test runs execute locally, counted
#      from Bazel's --execution_log_json_file, and its int8 artefacts are byte-identical to the pins;
#   2. a corrupted CAS blob on the server is detected, that one model is quantised locally, and the
#      corrupt bytes never reach bazel-bin;
#   3. the server stopped mid-build: the build still succeeds, locally, with Bazel's warnings;
#   4. a PUT over an action result without the writer's credential is refused; an action result
#      poisoned in the store reaches a reader, fails //model:int8_pins_test, and update_pins refuses it;
#   5. a lock with one pinned hash changed (a new venv) never hits the first clone's entries.
# Prints "remote-cache check: NAME PASSED|FAILED (...)" per check (.ci/run counts them).
# Exit codes: 0 all passed, 1 a check failed, 2 bad usage.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/tools/remote_cache
die() { echo "two_clone_test: $2" >&2; exit "$1"; }

store=""
while (($#)); do
  case "$1" in
    --store) (($# >= 2)) || die 2 "--store needs a value"; store=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    *) die 2 "unknown argument '$1' (usage: $0 --store DIR)" ;;
  esac
done
[[ -n "$store" ]] || die 2 "usage: $0 --store DIR (a store a first clone filled with --config=remote-cache)"
[[ -d "$store/ac" && -d "$store/cas" ]] || die 2 "$store has no ac/ and cas/: no first clone has written to it"
# The second clone is HEAD; uncommitted edits in the first would give it other cache keys.
[[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ]] || die 2 "$repo has uncommitted changes; commit them or run from a clean clone"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tinyq-two-clone.XXXXXX")
clone=$tmp/clone ob=$tmp/output_base
cleanup() {
  for state in "$tmp"/server-*; do
    [[ -d "$state" ]] && "$here/server.sh" stop --state "$state" 2>/dev/null || true
  done
  if [[ -x "$clone/tools/bazel" ]]; then
    (cd "$clone" && tools/bazel --output_base="$ob" shutdown) >/dev/null 2>&1 || true
  fi
  chmod -R u+w "$tmp" 2>/dev/null || true  # Bazel leaves read-only directories behind
  rm -rf "$tmp"
}
trap cleanup EXIT

failed=0
check() {  # check NAME DETAIL CONDITION...: runs the condition, prints one result line
  local name=$1 detail=$2
  shift 2
  if "$@"; then
    echo "remote-cache check: $name PASSED ($detail)"
  else
    echo "remote-cache check: $name FAILED ($detail)"
    failed=$((failed + 1))
  fi
}
bz() { (cd "$clone" && tools/bazel --output_base="$ob" "$@"); }
serve() {  # serve NAME STORE: starts a server, prints its URL
  "$here/server.sh" start --port auto --store "$2" --state "$tmp/server-$1"
}
spawns() { python3 "$here/check.py" spawns "$1" || echo "-1 -1 -1 -1"; }
check_pins() {  # check_pins NAME: the second clone's int8 artefacts against the pins
  local out rc=0
  out=$(python3 "$here/check.py" pins "$clone" 2>&1) || rc=$?
  check "$1" "$out" test "$rc" -eq 0
}
stamp() { echo "two_clone_test: [$((SECONDS))s] $*" >&2; }

git clone --quiet "$repo" "$clone"
git -C "$clone" checkout --quiet "$(git -C "$repo" rev-parse HEAD)"
# The hard-linked copy a corruption can be written into without touching $store.
cp -al "$store" "$tmp/store" 2>/dev/null || cp -a "$store" "$tmp/store"
url=$(serve warm "$tmp/store")
gates=$(bz query --noshow_progress 'filter("_gate_test$", tests(//model:all))' 2>/dev/null)
n_gates=$(wc -w <<<"$gates")
n_quant=$(bz query --noshow_progress 'kind(genrule, deps(//model:all_int8, 1))' 2>/dev/null | wc -l)
stamp "second clone at $clone (output base $ob): $n_quant quantisers, $n_gates gate tests, cache $url"

# --- 1. The second clone reads everything ---------------------------------------------------
stamp "second clone: test --config=remote-cache-ro //model:all_int8 + gate tests (builds its venv first)"
rc=0
TINYQ_REMOTE_CACHE=$url bz test --config=ci --config=remote-cache-ro --execution_log_json_file="$tmp/warm.json" \
  //model:all_int8 $gates >"$tmp/warm.log" 2>&1 || rc=$?
grep -E '^INFO: [0-9]+ processes' "$tmp/warm.log" | sed 's/^/  bazel: /' | tail -n 1 || true
read -r q_hit q_local g_hit g_local < <(spawns "$tmp/warm.json")
check second_clone_quantisers "$q_local of $n_quant quantiser actions ran locally, $q_hit remote cache hits, bazel exit $rc" \
  test "$rc" -eq 0 -a "$q_local" -eq 0 -a "$q_hit" -eq "$n_quant" -a "$n_quant" -gt 0
check second_clone_gate_tests "$g_local of $n_gates gate tests ran locally, $g_hit remote cache hits" \
  test "$rc" -eq 0 -a "$g_local" -eq 0 -a "$g_hit" -eq "$n_gates" -a "$n_gates" -gt 0
check_pins second_clone_pins

# --- 2. A corrupted CAS blob --------------------------------------------------------------
victim=$(ls "$clone"/bazel-bin/model/int8/*.int8.onnx 2>/dev/null | head -n 1 || true)
[[ -n "$victim" ]] || die 1 "the second clone built no int8 artefact; nothing to corrupt"
digest=$(sha256sum "$victim" | cut -d' ' -f1)
stamp "corrupting cas/$digest ($(basename "$victim")) on the server"
blob=$tmp/store/cas/$digest
python3 -c 'import sys; b = bytearray(open(sys.argv[1], "rb").read()); b[len(b) // 2] ^= 0xFF; sys.stdout.buffer.write(b)' \
  "$blob" >"$blob.corrupt"
mv "$blob.corrupt" "$blob"  # a new inode: the hard-linked original in $store is untouched
bz clean >/dev/null 2>&1
rc=0
TINYQ_REMOTE_CACHE=$url bz build --config=ci --config=remote-cache-ro --execution_log_json_file="$tmp/corrupt.json" \
  //model:all_int8 >"$tmp/corrupt.log" 2>&1 || rc=$?
read -r q_hit q_local _ _ < <(spawns "$tmp/corrupt.json")
grep -m1 -o "Expected digest '[0-9a-f]\{12\}" "$tmp/corrupt.log" | sed 's/^/  bazel: /' || true
check corrupt_blob_detected "bazel exit $rc; $q_local quantiser rebuilt locally, $q_hit hits" \
  test "$rc" -eq 0 -a "$q_local" -eq 1 -a "$q_hit" -eq $((n_quant - 1)) \
  -a "$(grep -c "does not match received digest" "$tmp/corrupt.log")" -ge 1
check_pins corrupt_blob_not_in_bazel_bin
ln -f "$store/cas/$digest" "$blob" 2>/dev/null || cp "$store/cas/$digest" "$blob"

# --- 3. The server stopped mid-build ------------------------------------------------------
mkdir -p "$tmp/store-empty"
url_stop=$(serve stop "$tmp/store-empty")
bz clean >/dev/null 2>&1
stamp "test --config=remote-cache against an empty cache; stopping it at its first upload"
TINYQ_REMOTE_CACHE=$url_stop bz test --config=ci --config=remote-cache //model:all_int8 $gates >"$tmp/stop.log" 2>&1 &
build=$!
for _ in $(seq 3000); do
  grep -q ' PUT /' "$tmp/server-stop/access.log" 2>/dev/null && break
  kill -0 "$build" 2>/dev/null || break
  sleep 0.1
done
"$here/server.sh" stop --state "$tmp/server-stop" 2>/dev/null
uploads=$(grep -c ' PUT /' "$tmp/server-stop/access.log" || true)
rc=0
wait "$build" || rc=$?
warnings=$(grep -cE '^WARNING: (Reading from|Writing to) Remote Cache' "$tmp/stop.log" || true)
check server_stopped_mid_build "bazel exit $rc after $uploads uploads; $warnings remote cache warnings after the stop" \
  test "$rc" -eq 0 -a "$uploads" -ge 1 -a "$warnings" -ge 1
check_pins server_stopped_pins

# --- 4. A poisoned action result, written without the writer's credential -------------------
# Any process that reaches the cache can try to PUT; only the writer's credential (TINYQ_CACHE_WRITER,
# which a remote-cache-ro reader never sends) can write. The action result of one quantiser, overwritten with
# garbage without it: refused, and the entry is what the first clone wrote.
ac_entry=$(ls "$tmp/store/ac" 2>/dev/null | head -n 1 || true)
if [[ -n "$ac_entry" ]]; then
  before=$(sha256sum "$tmp/store/ac/$ac_entry" | cut -d' ' -f1)
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT --data-binary 'poisoned action result' "$url/ac/$ac_entry" || true)
  after=$(sha256sum "$tmp/store/ac/$ac_entry" | cut -d' ' -f1)
  check poison_without_credential_refused "PUT ac/${ac_entry:0:12} without the credential: HTTP $code" \
    test "$code" = 401 -a "$before" = "$after"
else
  check poison_without_credential_refused "the first clone wrote no action result" false
fi

# --- 4b. A poisoned action result in the store ----------------------------------------------
# What a stolen writer's credential, or write access to the store, could do: vmaf_tiny_v2's
# quantiser action answered with vmaf_tiny_v3's artefact (a real blob, so it passes
# --remote_verify_downloads). The reader gets it; the pins test then fails and says a cache may be
# the cause; update_pins rebuilds locally, sees the difference and pins nothing.
v2_ac=$(grep -l 'model/int8/vmaf_tiny_v2.int8.onnx' "$tmp/store/ac/"* 2>/dev/null | head -n 1 || true)
v3_ac=$(grep -l 'model/int8/vmaf_tiny_v3.int8.onnx' "$tmp/store/ac/"* 2>/dev/null | head -n 1 || true)
if [[ -n "$v2_ac" && -n "$v3_ac" ]]; then
  stamp "poisoning ac/$(basename "$v2_ac" | cut -c1-12) (vmaf_tiny_v2's quantiser) with vmaf_tiny_v3's result"
  python3 -c 'import sys; b = open(sys.argv[1], "rb").read(); sys.stdout.buffer.write(b.replace(b"vmaf_tiny_v3.int8.onnx", b"vmaf_tiny_v2.int8.onnx"))' \
    "$v3_ac" >"$v2_ac.poison"
  mv "$v2_ac.poison" "$v2_ac"  # a new inode: the hard-linked original in $store is untouched
  bz clean >/dev/null 2>&1
  rc=0
  TINYQ_REMOTE_CACHE=$url bz build --config=ci --config=remote-cache-ro //model:all_int8 >"$tmp/poison.log" 2>&1 || rc=$?
  got=$(sha256sum "$clone/bazel-bin/model/int8/vmaf_tiny_v2.int8.onnx" 2>/dev/null | cut -d' ' -f1 || true)
  v3_pin=$(sha256sum "$clone/model/tiny/vmaf_tiny_v3.int8.onnx" | cut -d' ' -f1)
  check poisoned_entry_reaches_a_reader "bazel exit $rc; the reader's vmaf_tiny_v2.int8.onnx is ${got:0:12}, vmaf_tiny_v3's pin ${v3_pin:0:12}" \
    test "$rc" -eq 0 -a "$got" = "$v3_pin"
  rc=0
  bz test --config=ci //model:int8_pins_test >>"$tmp/poison.log" 2>&1 || rc=$?
  said=$(grep -c 'vmaf_tiny_v2: the built int8 artefact is not the pinned one.*poisoned' \
    "$clone/bazel-testlogs/model/int8_pins_test/test.log" 2>/dev/null || true)
  check poisoned_artefact_fails_pins_test "bazel exit $rc; the failure names the cache: $said" test "$rc" -ne 0 -a "$said" -ge 1
  rc=0
  TINYQ_REMOTE_CACHE=$url bz run --config=ci --config=remote-cache-ro //model:update_pins >>"$tmp/poison.log" 2>&1 || rc=$?
  changed=$(git -C "$clone" status --porcelain | wc -l)
  check update_pins_refuses_poison "update_pins exit $rc (14: not reproduced); $changed files changed in the clone" \
    test "$rc" -eq 14 -a "$changed" -eq 0 -a "$(grep -c 'vmaf_tiny_v2.int8.onnx: the build with cache reads gave' "$tmp/poison.log")" -ge 1
  ln -f "$store/ac/$(basename "$v2_ac")" "$v2_ac" 2>/dev/null || cp "$store/ac/$(basename "$v2_ac")" "$v2_ac"
  bz clean >/dev/null 2>&1
else
  check poisoned_entry_reaches_a_reader "no action result names vmaf_tiny_v2's or v3's artefact" false
fi

# --- 5. Another lock file: never a hit ----------------------------------------------------
# One pinned hash of one package changes (one pip does not need here, so the venv still builds);
# the lock's sha256 is in the interpreter wrapper, an input of every Python action.
wheel_dir=$tmp/wheel
lock=$clone/python/requirements_lock.txt
"$ob/external/tinyq_venv/venv/bin/python3" -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$wheel_dir" "$(grep -m1 -o '^packaging==[^ ]*' "$lock")" >"$tmp/pip.log" 2>&1 || true
if edit=$(python3 "$here/check.py" lock-edit "$lock" packaging "$wheel_dir"/packaging-*.whl 2>&1); then
  echo "  lock: $edit"
  old_lock=$(grep -o 'TINYQ_LOCK_SHA256=[0-9a-f]*' "$ob/external/tinyq_venv/python")
  stamp "build --config=remote-cache-ro //model:all_int8 on the edited lock (rebuilds the venv)"
  rc=0
  TINYQ_REMOTE_CACHE=$url bz build --config=ci --config=remote-cache-ro --execution_log_json_file="$tmp/lock.json" \
    //model:all_int8 >"$tmp/lock.log" 2>&1 || rc=$?
  new_lock=$(grep -o 'TINYQ_LOCK_SHA256=[0-9a-f]*' "$ob/external/tinyq_venv/python" || true)
  read -r q_hit q_local _ _ < <(spawns "$tmp/lock.json")
  check other_lock_never_hits "bazel exit $rc; venv ${old_lock#*=} -> ${new_lock#*=}; $q_hit hits, $q_local of $n_quant quantisers ran locally" \
    test "$rc" -eq 0 -a "$q_hit" -eq 0 -a "$q_local" -eq "$n_quant" -a "$old_lock" != "$new_lock" \
    -a "${new_lock#*=}" = "$(sha256sum "$lock" | cut -d' ' -f1)"
else
  check other_lock_never_hits "could not edit the lock: $edit $(tail -n 3 "$tmp/pip.log")" false
fi

if ((failed)); then
  for f in warm corrupt stop poison lock; do
    echo "--- $f.log (tail)" >&2
    # Indented, so .ci/run never counts Bazel's summary lines in here as its own.
    tail -n 30 "$tmp/$f.log" 2>/dev/null | sed 's/^/  | /' >&2 || true
  done
fi
stamp "done: $failed failed"
exit $((failed ? 1 : 0))
