#!/usr/bin/env bash
# micromachines setup: the one idempotent entry point.
#   ./setup.sh          set everything up (packages, venv + extensions, guest kernel, lab, images)
#   ./setup.sh run      set up, then run the main job (mm run of the built-in default image)
#   ./setup.sh test     set up, then run the whole test suite (unit, kvm, e2e in the lab)
# Slow results are cached under ${MM_CACHE:-~/.cache/mm}; a second run takes seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export MM_CACHE=${MM_CACHE:-$HOME/.cache/mm}
VENV=$ROOT/.venv
PY=/usr/bin/python3

# Debian packages: build tools, the guest kernel's source, the lab, images, network, tests.
APT_PACKAGES=(
  build-essential bc bison flex libelf-dev libssl-dev dwarves cpio xz-utils zstd kmod
  python3-venv python3-dev libseccomp2 libseccomp-dev
  linux-source-6.1 musl-tools busybox-static
  qemu-system-x86 qemu-utils
  e2fsprogs erofs-utils skopeo umoci docker-registry mmdebstrap debootstrap
  iproute2 nftables dropbear-bin openssh-client fio iperf3 rsync
)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

step_packages() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    [ "$(id -u)" = 0 ] || { echo "error: installing packages needs root" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

step_python() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.mm-deps-stamp" want
  want=$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python dependencies"
    "$VENV/bin/pip" install -q --upgrade pip setuptools wheel 'cython>=3.0'
    "$VENV/bin/pip" install -q --no-build-isolation -e "$ROOT[test]"
    echo "$want" > "$stamp"
  fi
  # Rebuild only the Cython modules that changed.
  (cd "$ROOT" && "$VENV/bin/python" setup.py -q build_ext --inplace >/dev/null)
  if [ "$(id -u)" = 0 ]; then ln -sf "$VENV/bin/mm" /usr/local/bin/mm; fi
}

step_artifacts() {
  local mm="$VENV/bin/mm"
  log "guest kernel";   "$mm" kernel build
  log "lab";            "$mm" lab prepare
  log "guest init"; make -C "$ROOT/guest" -s
  log "default image"; "$mm" image build-default
}

setup_all() {
  step_packages
  step_python
  step_artifacts
}

case "${1:-setup}" in
  setup) setup_all ;;
  run)
    setup_all
    "$VENV/bin/mm" doctor || true
    if ! "$VENV/bin/python" -c 'import sys; from vmm.hostinfo import runs_standard_guests as r; sys.exit(not r())'; then
      log "this host cannot boot standard guests: the main job runs inside the lab"
      "$VENV/bin/mm" lab exec -- "$VENV/bin/mm" doctor
    fi
    ;;
  test)
    setup_all
    shift || true
    cd "$ROOT"
    exec "$VENV/bin/python" -m pytest tests -p no:cacheprovider "$@"
    ;;
  *) echo "usage: $0 [setup|run|test]" >&2; exit 2 ;;
esac
