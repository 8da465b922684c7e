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
  iproute2 nftables dropbear-bin openssh-client fio iperf3 rsync linux-perf
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
    # compat mode: a plain path entry in a .pth file, instead of the import-hook finder
    # that costs ~20 ms at every interpreter start (every mm command, every worker)
    "$VENV/bin/pip" install -q --no-build-isolation --config-settings editable_mode=compat -e "$ROOT[test]"
    echo "$want" > "$stamp"
  fi
  # Rebuild only the Cython modules that changed.
  (cd "$ROOT" && "$VENV/bin/python" setup.py -q build_ext --inplace >/dev/null)
  # Bytecode for every module, here (~0.3 s): otherwise the first import of each module
  # inside the lab compiles it under emulation, tens of ms apiece.
  "$VENV/bin/python" -m compileall -q -j0 "$ROOT/vmm" "$ROOT/devices" "$ROOT/benchmarks" >/dev/null
  write_launcher
  if [ "$(id -u)" = 0 ]; then ln -sf "$VENV/bin/mm" /usr/local/bin/mm; fi
}

# .venv/bin/mm as pip writes it starts Python with `site`: the venv's .pth files and
# Debian's sitecustomize (apport's hook), ~8 ms of every mm command on a quiet host and
# ~0.3 s under the lab's emulation, where tests run hundreds of mm commands. This launcher
# runs `python -S` and puts on sys.path what site would have put there for mm: the
# checkout (the editable install's .pth) and the venv's site-packages.
write_launcher() {
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  printf '%s\n' "#!$VENV/bin/python3 -S" \
    "# mm's launcher, written by setup.sh (write_launcher): python -S, sys.path set here." \
    "import sys" \
    "sys.path[1:1] = ['$ROOT', '$site']" \
    "from vmm.cli.main import entry" \
    "entry()" > "$VENV/bin/mm.tmp"
  chmod 755 "$VENV/bin/mm.tmp"
  mv -f "$VENV/bin/mm.tmp" "$VENV/bin/mm"
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
    # The main job: boot the built-in default image as a microVM; it prints a greeting.
    setup_all
    flavour=$("$VENV/bin/python" -c 'from vmm import hostinfo; print(hostinfo.kvm_flavour() if not hostinfo.runs_standard_guests() else "")')
    if [ -z "$flavour" ]; then
      "$VENV/bin/mm" run --rm --network none mm/default
    else
      log "this host's /dev/kvm ($flavour) cannot boot standard Linux guests: mm run runs inside the lab (mm lab exec)"
      # Inside, the state directory must be on the lab's own tmpfs (Unix sockets cannot be bound over 9p).
      "$VENV/bin/mm" lab exec -- env MM_STATE=/run/mm-setup-run "$VENV/bin/mm" run --rm --network none mm/default
    fi
    ;;
  test)
    setup_all
    shift || true
    cd "$ROOT"
    exec "$VENV/bin/python" -m pytest tests -p no:cacheprovider --durations=25 "$@"
    ;;
  *) echo "usage: $0 [setup|run|test]" >&2; exit 2 ;;
esac
