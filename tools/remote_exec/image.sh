#!/usr/bin/env bash
# Builds the worker image: a Debian root (debootstrap, from this machine's own apt sources) holding
# Python, qemu-user (the gate's AVX2 row) and the lean runtime venv at /opt/tinyq, installed with
# --require-hashes from python/requirements_runtime_lock.txt. Every remote action runs inside it
# (tools/remote_exec/docker), so no action sees the host's files or its venv.
#
# Usage: tools/remote_exec/image.sh ROOT     builds ROOT (reused when its lock matches), prints the image name
#        tools/remote_exec/image.sh --name   prints the image name only: tinyq-runtime:<lock sha256, 16 hex>
set -euo pipefail
cd "$(dirname "$0")/../.."
lock=python/requirements_runtime_lock.txt
name="tinyq-runtime:$(sha256sum "$lock" | cut -c1-16)"
if [[ "${1:-}" == "--name" ]]; then echo "$name"; exit 0; fi
root=${1:?usage: image.sh ROOT | --name}
if [[ -f "$root/opt/tinyq/IMAGE" && "$(cat "$root/opt/tinyq/IMAGE")" == "$name" ]]; then echo "$name"; exit 0; fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >&2; }

# The Debian mirror this machine's apt already uses (deb822 or one-line sources), never a named host.
codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
mirror=$(awk '/^URIs:/ {u=$2} /^Suites:/ && $0 ~ " '"$codename"'( |$)" {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[[ -n "$mirror" ]] || mirror=$(awk '$1 == "deb" && $3 == "'"$codename"'" {print $2; exit}' /etc/apt/sources.list)
rm -rf "$root.tmp"
debootstrap --variant=minbase --include=python3,python3-venv,qemu-user "$codename" "$root.tmp" "$mirror" >&2

# The runtime lock's wheels, fetched by the host's pip (its index configuration), installed offline.
mkdir -p "$root.tmp/opt/tinyq/wheels"
cp "$lock" "$root.tmp/opt/tinyq/requirements_runtime_lock.txt"
python3 -m pip download --quiet --no-deps --require-hashes -r "$lock" -d "$root.tmp/opt/tinyq/wheels" >&2
# Inside the root, nothing of this shell's environment (pip's index settings, PYTHON* variables).
in_root() { chroot "$root.tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }
in_root /usr/bin/python3 -m venv /opt/tinyq/venv >&2
in_root /opt/tinyq/venv/bin/python3 -m pip install --quiet --no-index --no-deps --require-hashes \
  --find-links /opt/tinyq/wheels -r /opt/tinyq/requirements_runtime_lock.txt >&2
in_root /opt/tinyq/venv/bin/python3 -m compileall -q --invalidation-mode checked-hash /opt/tinyq/venv >&2 || true
rm -rf "$root.tmp/opt/tinyq/wheels" "$root.tmp/var/cache/apt/archives/"*.deb

# The interpreter remote Python actions name (tools/remote_exec:py_runtime), as the host venv's wrapper.
cat > "$root.tmp/opt/tinyq/python" <<'WRAPPER'
#!/bin/sh
unset PYTHONHOME PYTHONSTARTUP PYTHONUSERBASE
exec /opt/tinyq/venv/bin/python3 -P -s -B "$@"
WRAPPER
chmod +x "$root.tmp/opt/tinyq/python"
echo "$name" > "$root.tmp/opt/tinyq/IMAGE"
rm -rf "$root"
mv "$root.tmp" "$root"
echo "$name"
