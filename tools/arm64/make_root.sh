#!/usr/bin/env bash
# An arm64 Debian root that runs onnxruntime's aarch64 kernels under qemu-user, at the locked
# onnxruntime and numpy versions (docs/quantization.md#arm64-measured-not-gated).
#   tools/arm64/make_root.sh DIR
# debootstrap --foreign only unpacks the essential packages and downloads the rest; their files
# are unpacked with dpkg -x (no maintainer scripts, which would need binfmt_misc and a chroot).
# qemu-user (-L DIR) then resolves every absolute path inside DIR first, so DIR/proc/cpuinfo and
# DIR/sys/devices/system/cpu stand in for the host's x86 ones, which onnxruntime's CPU probe cannot
# parse (it crashed on them). The kernels themselves are chosen from the auxiliary vector's HWCAP,
# which qemu sets for the emulated core (-cpu cortex-a53: no dot product; -cpu max: dot product).
set -euo pipefail
root=${1:?usage: tools/arm64/make_root.sh DIR}
here=$(cd "$(dirname "$0")/../.." && pwd)
for pkg in debootstrap qemu-user unzip; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [[ -n "${missing[*]:-}" ]]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [[ ! -x "$root/usr/bin/python3.11" ]]; then
  debootstrap --foreign --arch=arm64 --variant=minbase --include=python3.11,libpython3.11-stdlib bookworm "$root"
  for deb in "$root"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$root"; done
fi
mkdir -p "$root/proc" "$root/sys/devices/system/cpu" "$root/opt/tinyq/site" "$root/opt/tinyq/wheels"
printf 'processor\t: 0\nBogoMIPS\t: 100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n\n' \
  > "$root/proc/cpuinfo"
for f in possible present online; do echo 0 > "$root/sys/devices/system/cpu/$f"; done
# onnxruntime and what it imports, at the versions python/requirements_lock.txt pins.
pins=()
for name in onnxruntime numpy protobuf flatbuffers packaging sympy mpmath; do
  pins+=("$(grep -m1 -E "^$name==" "$here/python/requirements_lock.txt" | cut -d' ' -f1)")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 -d "$root/opt/tinyq/wheels" "${pins[@]}"
for whl in "$root"/opt/tinyq/wheels/*.whl; do unzip -q -o "$whl" -d "$root/opt/tinyq/site"; done
echo "$root"
