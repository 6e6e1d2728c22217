#!/usr/bin/env bash
# Builds the worker image: a Debian root (debootstrap, from this machine's own apt sources) holding
# Python, qemu-user (the gate's AVX2 row) and the lean runtime venv at /opt/tinyq, installed with
# --require-hashes from python/requirements_runtime_lock.txt. Every remote action runs inside it
# (tools/remote_exec/docker), so no action sees the host's files or its venv.
#
# Usage: tools/remote_exec/image.sh ROOT     builds ROOT (reused when its lock matches), prints the image name
#        tools/remote_exec/image.sh --name   prints the image name only: tinyq-runtime:<lock sha256, 16 hex>
set -euo pipefail
arg=${1:?usage: image.sh ROOT | --name}
[[ "$arg" == --name ]] || root=$(realpath -m -- "$arg")  # relative to the caller's folder
cd "$(dirname "$0")/../.."
lock=python/requirements_runtime_lock.txt
name="tinyq-runtime:$(sha256sum "$lock" | cut -c1-16)"
if [[ "$arg" == --name ]]; then echo "$name"; exit 0; fi
if [[ -f "$root/opt/tinyq/IMAGE" && "$(cat "$root/opt/tinyq/IMAGE")" == "$name" ]]; then echo "$name"; exit 0; fi
# ROOT is replaced only when it is an older image: any other folder is the user's, and is kept.
if [[ -e "$root" && ! -f "$root/opt/tinyq/IMAGE" ]]; then
  echo "image.sh: $root exists and is not a worker image (no opt/tinyq/IMAGE); name a new folder. Nothing was changed." >&2
  exit 2
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >&2; }

# The Debian mirror this machine's apt already uses (deb822 or one-line sources), never a named host.
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
mirror=$(awk '/^URIs:/ {u=$2} /^Suites:/ && $0 ~ " '"$codename"'( |$)" {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[[ -n "$mirror" ]] || mirror=$(awk '$1 == "deb" && $3 == "'"$codename"'" {print $2; exit}' /etc/apt/sources.list)
mkdir -p "$(dirname "$root")"
work=$(mktemp -d "$root.tmp.XXXXXX")  # this run's own; removed if it fails
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
debootstrap --variant=minbase --include=python3,python3-venv,qemu-user "$codename" "$work" "$mirror" >&2

# The runtime lock's wheels, fetched by the host's pip (its index configuration), installed offline.
mkdir -p "$work/opt/tinyq/wheels"
cp "$lock" "$work/opt/tinyq/requirements_runtime_lock.txt"
python3 -m pip download --quiet --no-deps --require-hashes -r "$lock" -d "$work/opt/tinyq/wheels" >&2
# Inside the root, nothing of this shell's environment (pip's index settings, PYTHON* variables).
in_root() { chroot "$work" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
in_root /usr/bin/python3 -m venv /opt/tinyq/venv >&2
in_root /opt/tinyq/venv/bin/python3 -m pip install --quiet --no-index --no-deps --require-hashes \
  --find-links /opt/tinyq/wheels -r /opt/tinyq/requirements_runtime_lock.txt >&2
in_root /opt/tinyq/venv/bin/python3 -m compileall -q --invalidation-mode checked-hash /opt/tinyq/venv >&2 || true
rm -rf "$work/opt/tinyq/wheels" "$work/var/cache/apt/archives/"*.deb

# The interpreter remote Python actions name (tools/remote_exec:py_runtime), as the host venv's wrapper.
cat > "$work/opt/tinyq/python" <<'WRAPPER'
#!/bin/sh
unset PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE
exec /opt/tinyq/venv/bin/python3 -P -s -B "$@"
WRAPPER
chmod +x "$work/opt/tinyq/python"
echo "$name" > "$work/opt/tinyq/IMAGE"
rm -rf "$root"  # an older image (checked above), or nothing
mv "$work" "$root"
trap - EXIT
echo "$name"
