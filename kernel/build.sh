#!/usr/bin/env bash
# Build the micromachines guest kernel: tinyconfig + kernel/microvm.config.
#   kernel/build.sh SOURCE_TARBALL WORK_DIR OUT_DIR [JOBS]
# WORK_DIR holds the unpacked tree (reused when present); OUT_DIR receives vmlinux,
# bzImage and config. The caller (vmm.kernel) makes OUT_DIR appear atomically.
set -euo pipefail

src_tarball=$1 work=$2 out=$3 jobs=${4:-2}
fragment=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/microvm.config

mkdir -p "$work" "$out"
tree=$work/linux
if [ ! -f "$tree/.unpacked" ]; then
  rm -rf "$tree"
  mkdir -p "$tree"
  echo "unpacking $src_tarball" >&2
  tar -xf "$src_tarball" -C "$tree" --strip-components=1
  touch "$tree/.unpacked"
fi

cd "$tree"
make -s tinyconfig
# -m: merge only; olddefconfig then resolves dependencies of what we asked for.
KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m -O . .config "$fragment" >/dev/null
make -s olddefconfig

# Every option the fragment asks for must have survived dependency resolution.
missing=0
while IFS= read -r line; do
  case "$line" in ''|'#'*) continue ;; esac
  opt=${line%%=*} want=${line#*=}
  if [ "$want" = n ]; then
    if grep -q "^$opt=" .config; then echo "config: $opt wanted n, got $(grep "^$opt=" .config)" >&2; missing=1; fi
  elif ! grep -qx "$opt=$want" .config; then
    echo "config: $opt wanted $want, got $(grep "^$opt=" .config || echo 'not set')" >&2; missing=1
  fi
done < "$fragment"
[ "$missing" = 0 ] || { echo "error: the fragment does not apply cleanly" >&2; exit 3; }

make -j"$jobs" vmlinux bzImage >&2
cp vmlinux "$out/vmlinux"
cp arch/x86/boot/bzImage "$out/bzImage"
cp .config "$out/config"
