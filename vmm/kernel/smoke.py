"""Booting our guest kernel under QEMU microvm with a tiny busybox initramfs.

Proves the config before our VMM exists and gives the baseline it must beat: the init
prints a marker with the guest's uptime and CPU/memory counts, then reboots; `reboot=t`
plus QEMU's `-no-reboot` make the reboot end QEMU. Used by the kernel e2e test and the
lab benchmarks (under KVM in the lab) and for a quick check under TCG on any host.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from vmm.lab.cpio import CpioWriter

MARKER = "MM-GUEST-INIT-OK"
BUSYBOX = Path("/bin/busybox")
# The marker goes through printk (/dev/kmsg, level 2 so any loglevel shows it): the console
# writes it synchronously, where a tty write could still sit in the UART when we reboot.
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
read up idle < /proc/uptime
echo "<2>{MARKER} uptime=$up cpus=$(/bin/busybox nproc) mem_kb=$(/bin/busybox awk '/MemTotal/ {{print $2}}' /proc/meminfo)" > /dev/kmsg
/bin/busybox reboot -f
"""
MARKER_RE = re.compile(MARKER + r" uptime=([0-9.]+) cpus=(\d+) mem_kb=(\d+)")


@dataclass(frozen=True)
class InitReport:
    uptime: float  # guest seconds from kernel start to our init's first line
    cpus: int
    mem_kb: int


def tiny_initramfs(out: Path, busybox: Path = BUSYBOX) -> Path:
    """Two concatenated archives (busybox, then /init), as our guest init ships: every boot
    with it also proves the kernel unpacks concatenated cpio archives."""
    base, top = io.BytesIO(), io.BytesIO()
    w = CpioWriter(base)
    for d in ("proc", "sys", "dev"):
        w.mkdir(d)
    w.chardev("dev/console", 5, 1)
    w.add_path("bin/busybox", busybox, 0o755)
    w.close()
    w = CpioWriter(top)
    w.file("init", INIT.encode(), 0o755)
    w.close()
    out.write_bytes(base.getvalue() + top.getvalue())
    return out


def microvm_argv(kernel: Path, initrd: Path, *, accel: str = "kvm", cpus: int = 1, memory_mib: int = 256) -> list[str]:
    cpu = "host" if accel == "kvm" else "max"
    return [
        "qemu-system-x86_64", "-M", "microvm", "-accel", accel, "-cpu", cpu,
        "-smp", str(cpus), "-m", f"{memory_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 reboot=t panic=-1 loglevel=4",
    ]


def parse_report(console: str) -> InitReport | None:
    m = MARKER_RE.search(console)
    if m is None:
        return None
    return InitReport(float(m.group(1)), int(m.group(2)), int(m.group(3)))
