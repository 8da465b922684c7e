"""The lab's QEMU command line (a pure function of its settings) and a minimal QMP client.

QEMU runs in TCG mode with an AMD-like `-cpu max` (SVM included), so the lab kernel's
kvm-amd gives a real nested-paging /dev/kvm. The exec channel is QEMU user networking with
one host port forwarded, bound to 127.0.0.1 only.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from vmm.lab.errors import LabError
from vmm.lab.initramfs import AGENT_PORT, Share

QEMU = "qemu-system-x86_64"
# qboot (shipped with Debian's QEMU) jumps straight to the kernel; SeaBIOS is the default.
QBOOT = Path("/usr/share/qemu/qboot.rom")
FIRMWARE = ("-bios", str(QBOOT)) if QBOOT.is_file() else ()
KERNEL_CMDLINE = (
    "console=ttyS0,115200 panic=-1 quiet loglevel=4 mitigations=off nokaslr "
    "tsc=reliable no_timer_check rdinit=/init"
)


@dataclass(frozen=True)
class LabSettings:
    """What a user may choose about the lab (`mm lab up --memory --cpus`, MM_LAB_MEMORY/CPUS)."""

    memory_mib: int = 8192
    cpus: int = 2

    def __post_init__(self) -> None:
        if not 512 <= self.memory_mib <= 1 << 20:
            raise LabError(f"lab memory {self.memory_mib} MiB is out of range", "use 512 MiB .. 1 TiB (default 8192)")
        if not 1 <= self.cpus <= 64:
            raise LabError(f"lab cpus {self.cpus} is out of range", "use 1..64 (default 2)")

    @classmethod
    def from_env(cls, memory_mib: int | None = None, cpus: int | None = None) -> "LabSettings":
        def num(name: str, given: int | None, default: int) -> int:
            if given is not None:
                return given
            raw = os.environ.get(name)
            if raw is None:
                return default
            try:
                return int(raw)
            except ValueError:
                raise LabError(f"{name}={raw!r} is not a number") from None

        return cls(num("MM_LAB_MEMORY", memory_mib, cls.memory_mib), num("MM_LAB_CPUS", cpus, cls.cpus))


def command_line(
    *, kernel: Path, initrd: Path, shares: tuple[Share, ...], settings: LabSettings,
    host_port: int, serial_log: Path, qmp_socket: Path, pidfile: Path,
) -> list[str]:
    argv = [
        QEMU, "-name", "mm-lab",
        "-M", "q35", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-smp", str(settings.cpus), "-m", f"{settings.memory_mib}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", *FIRMWARE,
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", KERNEL_CMDLINE,
        "-chardev", f"file,id=serial0,path={serial_log}", "-serial", "chardev:serial0",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{host_port}-:{AGENT_PORT}",
        "-device", "virtio-net-pci,netdev=net0",
        "-daemonize", "-pidfile", str(pidfile),
    ]
    for i, share in enumerate(shares):
        opts = f"local,id=fs{i},path={_qemu_escape(str(share.path))},security_model=none,multidevs=remap"
        if not share.writable:
            opts += ",readonly=on"
        argv += ["-fsdev", opts, "-device", f"virtio-9p-pci,fsdev=fs{i},mount_tag={share.tag}"]
    return argv


def _qemu_escape(value: str) -> str:
    # QEMU's option parser splits on commas; a literal comma is written twice.
    return value.replace(",", ",,")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def qmp_quit(qmp_socket: Path, timeout: float = 5.0) -> bool:
    """Ask QEMU to exit at once; False when its monitor is not reachable."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(qmp_socket))
            f = s.makefile("rwb")
            f.readline()  # greeting
            for cmd in ({"execute": "qmp_capabilities"}, {"execute": "quit"}):
                f.write(json.dumps(cmd).encode() + b"\n")
                f.flush()
                f.readline()
        return True
    except OSError:
        return False
