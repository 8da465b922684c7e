"""The lab's initramfs: busybox-static, the modules needed to reach the host, and our /init.

Two archives concatenated into one initrd (the kernel unpacks both, in order):
  base    cached by `mm lab prepare`: busybox and the .ko files;
  config  written at every boot: /init, a modprobe helper, which 9p shares to mount where,
          the agent's port and paths.
The /init script mounts the host's `/` (9p, read-only) at /host plus the writable shares at
their host paths, sets up /dev, /proc, /sys, /tmp, /run inside it, makes Debian's module
tree reachable by modprobe, and finally becomes the exec agent chrooted into /host.
"""
from __future__ import annotations

import io
import shlex
from dataclasses import dataclass
from pathlib import Path

from vmm.lab.cpio import CpioWriter
from vmm.lab.errors import LabError

# What the lab needs before it can see the host: the 9p stack over virtio-pci, the network
# card for the exec channel, and nested SVM. Dependencies (netfs, fscache, ccp, irqbypass...)
# come from modules.dep.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "virtio_net", "kvm_amd")

# Inside the lab the agent listens here; QEMU forwards a 127.0.0.1 port of the host to it.
AGENT_PORT = 7777
GUEST_ADDR, GUEST_GATEWAY = "10.0.2.15/24", "10.0.2.2"  # QEMU user networking's defaults

INIT_SCRIPT = r"""#!/bin/busybox sh
# PID 1 of the lab (written by vmm/lab/initramfs.py).
/bin/busybox mkdir -p /proc /sys /dev /host /usr/bin /usr/sbin /sbin
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { read -r up _ < /proc/uptime; echo "[$up] mm-lab: $*"; }
fail() { log "error: $*"; echo o > /proc/sysrq-trigger; sleep 5; exit 1; }
. /etc/mm-lab.env
log "loading modules"
for m in $(cat /etc/mm-lab.modules); do insmod "/lib/mm-modules/$m" || fail "insmod $m"; done
R=/host
share() {  # tag ro|rw cache-mode target
  opts="trans=virtio,version=9p2000.L,msize=512000,cache=$3"
  [ "$2" = ro ] && opts="$opts,ro"
  mkdir -p "$4" 2>/dev/null
  mount -t 9p -o "$opts" "$1" "$4" || fail "mount 9p $1 at $4"
}
# The host's / first, then the lab's own /dev, /proc, /sys, /tmp, /run, then the other
# shares (after /tmp and /run, so a share may live under them).
read -r tag mode cache path < /etc/mm-lab.shares
[ "$tag" = host ] || fail "the first share must be the host's /"
share host "$mode" "$cache" $R
mount -t devtmpfs devtmpfs $R/dev || fail "mount /dev"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,gid=5,mode=620 devpts $R/dev/pts
ln -sf pts/ptmx $R/dev/ptmx
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mount -t tmpfs -o mode=1777 tmp $R/tmp
mount -t tmpfs -o mode=755 run $R/run
tail -n +2 /etc/mm-lab.shares | while read -r tag mode cache path; do
  share "$tag" "$mode" "$cache" "$R$path"
done
log "shares mounted"
# Debian's module tree for this kernel at the path modprobe expects; the kernel's own
# module requests go through a helper that runs the host's modprobe inside the chroot.
if [ -d $R/usr/lib/modules ]; then
  mount -t tmpfs -o mode=755 modules $R/usr/lib/modules
  mkdir -p "$R/usr/lib/modules/$MM_KVER"
  mount --bind "$R$MM_MODULES" "$R/usr/lib/modules/$MM_KVER" || fail "bind the module tree"
  echo /sbin/mm-modprobe > /proc/sys/kernel/modprobe
  # The kernel's module requests do not reach the helper here: nfnetlink is not loaded
  # by netlink socket creation (nft then says "Protocol not supported"), tun not by
  # opening /dev/net/tun, bridge not by `ip link add type bridge` ("Unknown device
  # type"). Load what VM networking (vmm/network: bridge, veth, TAP, nft NAT) uses.
  chroot $R /sbin/modprobe -a nf_tables tun bridge veth nft_nat nft_masq nft_chain_nat nft_ct nft_fib_ipv4 \
    || log "modprobe of the networking modules failed: VM networking will not work in the lab"
fi
ip link set lo up
ip link set eth0 up && ip addr add "$MM_ADDR" dev eth0 && ip route add default via "$MM_GATEWAY" \
  || fail "network"
hostname mm-lab
echo lab > $R/run/mm-lab
# Our VMM's guest RAM is a memfd (shmem), whose THP is off by default; KVM then maps it
# in 4 KiB steps, each a nested exit here. "advise" gives huge pages only to mappings
# that ask (vmm/memory.py), as QEMU's anonymous RAM gets them with THP "always".
echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled || log "no shmem THP: guests boot slower"
log "starting agent"
exec chroot $R "$MM_PYTHON" -I -S "$MM_AGENT" --port "$MM_PORT" --token-file "$MM_TOKEN_FILE"
"""

MODPROBE_HELPER = """#!/bin/busybox sh
exec /bin/busybox chroot /host /sbin/modprobe "$@"
"""


@dataclass(frozen=True)
class Share:
    """One 9p export: QEMU's mount tag, the host path, writable or not, where it appears inside."""

    tag: str
    path: Path
    writable: bool
    cache: str  # 9p cache mode inside: "loose" for read-mostly trees, "mmap" for shared writable ones
    guest_path: Path | None = None  # default: the same path as on the host

    @property
    def inside(self) -> Path:
        return self.guest_path or self.path

    def __post_init__(self) -> None:
        if not self.tag or len(self.tag) > 31 or not self.tag.replace("_", "").isalnum():
            raise LabError(f"bad 9p mount tag {self.tag!r}", "tags are 1-31 letters, digits or _")
        for p in (self.path, self.inside):
            if not p.is_absolute() or any(c in str(p) for c in "\n\0"):
                raise LabError(f"bad share path {str(p)!r}", "shares are absolute paths without newlines")
        if self.cache not in ("none", "loose", "mmap", "fscache"):
            raise LabError(f"bad 9p cache mode {self.cache!r}")


@dataclass(frozen=True)
class BootConfig:
    """What the per-boot archive tells /init."""

    shares: tuple[Share, ...]
    python: str
    agent: Path
    token_file: Path
    kernel_version: str
    modules_dir: Path  # the unpacked lib/modules/<version> on the host
    port: int = AGENT_PORT


def resolve_modules(wanted: tuple[str, ...] | list[str], modules_dep: str) -> list[str]:
    """Paths (relative to the module tree) of `wanted` and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        path = by_name.get(name.replace("-", "_"))
        if path is None:
            raise LabError(
                f"module {name} is not in the lab kernel's modules.dep",
                "run `mm lab prepare --force` to unpack the kernel package again",
            )
        visit(path)
    return order


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def build_base(out: Path, busybox: Path, module_root: Path, modules: list[str]) -> None:
    """Write the cached archive: busybox and the modules in load order."""
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("dev", "proc", "sys", "host", "etc", "tmp", "lib/mm-modules"):
        w.mkdir(d)
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    w.add_path("bin/busybox", busybox, 0o755)
    w.symlink("bin/sh", "busybox")
    names = []
    for rel in modules:
        name = rel.rsplit("/", 1)[-1]
        names.append(name)
        w.add_path(f"lib/mm-modules/{name}", module_root / rel, 0o644)
    w.file("etc/mm-lab.modules", ("\n".join(names) + "\n").encode())
    w.close()
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)


def config_archive(cfg: BootConfig) -> bytes:
    """The small per-boot archive: /etc/mm-lab.env and /etc/mm-lab.shares."""
    env = {
        "MM_PYTHON": cfg.python,
        "MM_AGENT": str(cfg.agent),
        "MM_TOKEN_FILE": str(cfg.token_file),
        "MM_PORT": str(cfg.port),
        "MM_KVER": cfg.kernel_version,
        "MM_MODULES": str(cfg.modules_dir),
        "MM_ADDR": GUEST_ADDR,
        "MM_GATEWAY": GUEST_GATEWAY,
    }
    env_text = "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
    # The root share first; the others by path length so a share inside another mounts on top.
    ordered = sorted(cfg.shares, key=lambda s: (s.tag != "host", len(str(s.inside))))
    shares_text = "".join(
        f"{s.tag} {'rw' if s.writable else 'ro'} {s.cache} {s.inside}\n" for s in ordered
    )
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.file("etc/mm-lab.env", env_text.encode())
    w.file("etc/mm-lab.shares", shares_text.encode())
    # The scripts travel with each boot so a code change needs no `mm lab prepare --force`.
    w.file("init", INIT_SCRIPT.encode(), 0o755)
    w.file("sbin/mm-modprobe", MODPROBE_HELPER.encode(), 0o755)
    w.close()
    return buf.getvalue()
