"""The boot test/benchmark guest: a tiny initramfs of busybox-static with an /init script.

    path = build(cache_dir)      # -> cache_dir/boot-initramfs-<hash>.cpio (rebuilt if changed)

/init mounts /proc, prints `MM-INIT uptime=<s>`, `MM-CPUS <n>`, `MM-MEM <kB>`,
`MM-WARNINGS <n>` (kernel WARN splats in dmesg), then does
what `mmaction=` on the kernel command line says: poweroff (default), reboot, panic
(init exits, so the kernel panics), or shell. Used by tests/e2e/test_boot*.py and the
side-by-side benchmark, so both boot exactly the same guest.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

from vmm.lab.cpio import CpioWriter

BUSYBOX = Path("/bin/busybox")
MARKER = "MM-INIT"

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t devtmpfs dev /dev 2>/dev/null
# Also through the kernel log (level 2, shown even with `quiet`): printk's console path
# does not depend on the tty layer.
say() { echo "$*"; echo "<2>$*" > /dev/kmsg; }
say "MM-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
say "MM-CPUS $(grep -c ^processor /proc/cpuinfo)"
say "MM-MEM $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
# Kernel warnings (WARN() splats, e.g. an inconsistent XSAVE layout from our CPUID).
say "MM-WARNINGS $(dmesg | grep -c -e 'WARNING:' -e 'consistency problem')"
case "$mmaction" in
  reboot) reboot -f ;;
  panic) say "MM-PANIC"; exit 1 ;;
  shell) exec sh ;;
  *) poweroff -f ;;
esac
sleep 5
"""


def archive() -> bytes:
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("bin", "dev", "proc", "sys", "tmp"):
        w.mkdir(d)
    w.chardev("dev/console", 5, 1)
    w.add_path("bin/busybox", BUSYBOX, 0o755)
    w.file("init", INIT.encode(), 0o755)
    w.close()
    return buf.getvalue()


def build(directory: str | os.PathLike) -> Path:
    """Write the archive into `directory` (named by its content hash) and return its path."""
    data = archive()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"boot-initramfs-{hashlib.sha256(data).hexdigest()[:12]}.cpio"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


_REPORT = {"uptime": (re.compile(r"MM-INIT uptime=(\d+(?:\.\d+)?)\r?$", re.M), float),
           "cpus": (re.compile(r"MM-CPUS (\d+)\r?$", re.M), int),
           "mem_kb": (re.compile(r"MM-MEM (\d+)\r?$", re.M), int),
           "warnings": (re.compile(r"MM-WARNINGS (\d+)\r?$", re.M), int)}


def parse_report(console: str) -> dict:
    """The MM-* lines the guest printed: {"uptime": float, "cpus": int, "mem_kb": int,
    "warnings": int} (keys missing when not printed).

    Each line comes twice, from the shell through the tty and from /dev/kmsg through
    printk; with several vCPUs the two can interleave mid-line on the UART, so a value
    counts only where its line ends right after it (the printk copy always does)."""
    out: dict = {}
    for key, (pattern, kind) in _REPORT.items():
        found = pattern.findall(console)
        if found:
            out[key] = kind(found[-1])
    return out


if __name__ == "__main__":
    from vmm import paths

    print(build(paths.cache_dir() / "boot"))
