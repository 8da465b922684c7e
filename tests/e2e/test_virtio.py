"""virtio devices with a real Linux guest (our kernel's own virtio-mmio drivers), where
real guests run (the lab on this PVM host).

Each test builds a busybox initramfs whose /init exercises the devices and prints
`MM-…` lines, then runs this file as a program (`python test_virtio.py run …`) on the
guest host: it builds a `vmm.machine.Machine`, attaches the virtio devices (transport on
the MMIO bus, queue eventfds as KVM ioeventfds, interrupt as an irqfd), boots and
prints the guest console. The checks happen here on the host side afterwards.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# Seen in the lab at 15:50 UTC on 2026-11-23 with vmm.machine at bcf6fc4: the guest's ACPI
# tables fail to load ("AE_BAD_PARAMETER, During Region initialization"), no legacy IRQs
# are preallocated ("preallocated irqs: 0"), so virtio-mmio's request_irq(5) fails
# ("virtio_rng: probe of virtio0 failed with error -22"), user-space console output never
# appears and poweroff halts. Device negotiation up to find_vqs did succeed.
pytestmark = pytest.mark.skip(
    reason="vmm.machine's guest IRQ routing (ACPI/MADT) does not yet give virtio-mmio a usable IRQ; "
           "remove this mark once `mm boot` shows user-space output in the lab")

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")
BUSYBOX = Path("/bin/busybox")
RUN_TIMEOUT = 600

PRELUDE = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo MM-UP
"""
EPILOGUE = """
echo MM-DONE
poweroff -f
sleep 10
"""


# -- the program that runs on the guest host --------------------------------------------
def attach(machine, device, events):
    """Put a virtio device on the machine: MMIO window, ioeventfds, irqfd."""
    from devices.virtio.mmio import MmioTransport

    transport = MmioTransport(device, machine.mem, None, events)
    addr, irq = machine.attach_mmio_device(transport)
    transport.interrupt = machine.irq_line(irq)
    for offset, datamatch, fd in transport.ioeventfds():
        machine.vm.ioeventfd(fd, addr + offset, 4, datamatch=datamatch)
    return transport


def build_devices(args):
    from devices.virtio.balloon.device import BalloonDevice
    from devices.virtio.block.device import BlockDevice
    from devices.virtio.rng.device import RngDevice
    from devices.virtio.vsock.device import VsockDevice

    devs = [BlockDevice(d) for d in args.disk] + [BlockDevice(d, read_only=True) for d in args.ro_disk]
    if args.rng:
        devs.append(RngDevice())
    if args.vsock:
        cid, path = args.vsock.split(":", 1)
        devs.append(VsockDevice(int(cid), path))
    if args.balloon:
        devs.append(BalloonDevice(0))
    return devs


def run_guest(args) -> int:
    from devices.virtio.testing import EventLoop
    from vmm.machine import Machine, MachineConfig

    console = bytearray()
    events = EventLoop()
    cfg = MachineConfig(kernel=args.kernel, initrd=args.initrd, memory=args.memory << 20,
                        extra_cmdline=tuple(args.append))
    m = Machine(cfg, console=lambda data: (console.extend(data), sys.stdout.buffer.write(data),
                                           sys.stdout.flush()))
    transports = [attach(m, d, events) for d in build_devices(args)]
    stop = threading.Event()
    loop_thread = threading.Thread(target=lambda: [events.run_once(0.05) for _ in iter(stop.is_set, True)],
                                   daemon=True)
    loop_thread.start()
    hooks = HostHooks(m, transports, console, args)
    m.start()
    hooks.start()
    end = m.wait(args.timeout)
    stop.set()
    print(f"\nMM-HOST exit={end.reason if end else 'timeout'}")
    for line in hooks.report:
        print(line)
    for t in transports:
        t.close()
    m.close()
    return 0 if end is not None and end.reason == "poweroff" else 1


class HostHooks(threading.Thread):
    """Host-side actions timed by the guest's console lines (balloon, vsock)."""

    def __init__(self, machine, transports, console, args):
        super().__init__(daemon=True)
        self.m, self.transports, self.console, self.args = machine, transports, console, args
        self.report: list[str] = []

    def wait_for(self, marker: bytes, timeout: float = 300) -> bool:
        deadline = time.monotonic() + timeout
        while marker not in self.console:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def run(self):
        if self.args.balloon:
            self.balloon()

    def balloon(self):
        from devices.virtio.balloon.device import BalloonDevice
        dev = next(t.device for t in self.transports if isinstance(t.device, BalloonDevice))
        if not self.wait_for(b"MM-BALLOON-READY"):
            return
        before = os.fstat(self.m.mem.memfd).st_blocks * 512
        dev.set_target(self.args.balloon)
        deadline = time.monotonic() + 120
        while dev.actual_pages < dev.num_pages and time.monotonic() < deadline:
            time.sleep(0.1)
        after = os.fstat(self.m.mem.memfd).st_blocks * 512
        self.report.append(f"MM-BALLOON before={before} after={after} actual={dev.actual_pages} "
                           f"inflated={dev.metrics.inflated_pages}")
        self.m.write_console(b"go\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("command", choices=["run"])
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--memory", type=int, default=256, help="MiB")
    p.add_argument("--disk", action="append", default=[])
    p.add_argument("--ro-disk", action="append", default=[])
    p.add_argument("--rng", action="store_true")
    p.add_argument("--vsock", help="CID:UDS_PATH")
    p.add_argument("--balloon", type=int, default=0, help="MiB to inflate once the guest is ready")
    p.add_argument("--timeout", type=float, default=RUN_TIMEOUT - 30)
    p.add_argument("--append", action="append", default=["quiet"], help="kernel command-line words")
    return run_guest(p.parse_args(argv))


# -- the tests ---------------------------------------------------------------------------
def initramfs(directory: Path, script: str, extra: dict[str, Path] | None = None) -> Path:
    from vmm.lab.cpio import CpioWriter

    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("bin", "dev", "proc", "sys", "tmp", "mnt"):
        w.mkdir(d)
    w.chardev("dev/console", 5, 1)
    w.add_path("bin/busybox", BUSYBOX, 0o755)
    for name, src in (extra or {}).items():
        w.add_path(f"bin/{name}", src, 0o755)
    w.file("init", (PRELUDE + script + EPILOGUE).encode(), 0o755)
    w.close()
    path = directory / f"virtio-{hashlib.sha256(buf.getvalue()).hexdigest()[:12]}.cpio"
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def kernel() -> str:
    try:
        from vmm.kernel import kernel_path
        return str(kernel_path("vmlinux"))
    except Exception as exc:  # KernelNotBuilt and friends carry a hint
        pytest.skip(f"guest kernel not available ({exc}); run `mm kernel build`")


def boot(guest_host, kernel, initrd, *args, timeout=RUN_TIMEOUT):
    res = guest_host.run([PYTHON, __file__, "run", "--kernel", kernel, "--initrd", initrd, *map(str, args)],
                         timeout=timeout)
    assert "MM-UP" in res.stdout, res.stdout[-4000:] + res.stderr[-4000:]
    return res


def lines(out: str, tag: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if ln.strip().startswith(tag)]


def test_block_ext4_rw_and_ro_disks_and_hwrng(guest_host, kernel):
    work = Path(guest_host.workdir)
    rw, ro = work / "rw.ext4", work / "ro.img"
    with open(rw, "wb") as f:
        f.truncate(128 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(rw)], check=True)
    ro.write_bytes(b"R" * (1 << 20))
    script = """
mount -t ext4 /dev/vda /mnt && echo MM-MOUNTED
dd if=/dev/urandom of=/mnt/data bs=1M count=64 2>/dev/null
echo "MM-SUM $(sha256sum /mnt/data | cut -d' ' -f1)"
umount /mnt && echo MM-UMOUNTED
echo "MM-RO-FLAG $(cat /sys/block/vdb/ro)"
if echo x | dd of=/dev/vdb bs=1 count=1 conv=fsync 2>/dev/null; then echo MM-RO-WRITE ok; else echo MM-RO-WRITE refused; fi
echo "MM-RO-READ $(dd if=/dev/vdb bs=4 count=1 2>/dev/null)"
echo "MM-RNG $(cat /sys/class/misc/hw_random/rng_current) $(dd if=/dev/hwrng bs=64 count=2 2>/dev/null | wc -c)"
"""
    initrd = initramfs(work, script)
    res = boot(guest_host, kernel, initrd, "--disk", rw, "--ro-disk", ro, "--rng")
    out = res.stdout
    assert "MM-MOUNTED" in out and "MM-UMOUNTED" in out, out[-4000:]
    guest_sum = lines(out, "MM-SUM")[0].split()[1]
    dumped = work / "data.out"
    subprocess.run(["debugfs", "-R", f"dump /data {dumped}", str(rw)], check=True, capture_output=True)
    assert dumped.stat().st_size == 64 << 20
    assert hashlib.sha256(dumped.read_bytes()).hexdigest() == guest_sum
    assert lines(out, "MM-RO-FLAG") == ["MM-RO-FLAG 1"]
    assert lines(out, "MM-RO-WRITE") == ["MM-RO-WRITE refused"]
    assert lines(out, "MM-RO-READ") == ["MM-RO-READ RRRR"]
    assert ro.read_bytes() == b"R" * (1 << 20)
    assert lines(out, "MM-RNG")[0].split()[1:] == ["virtio_rng.0", "128"], out[-3000:]
    assert "MM-HOST exit=poweroff" in out


def test_balloon_inflate_returns_memory(guest_host, kernel):
    work = Path(guest_host.workdir)
    script = """
mount -t tmpfs -o size=200m tmpfs /tmp
dd if=/dev/zero of=/tmp/fill bs=1M count=128 2>/dev/null
rm /tmp/fill
echo MM-BALLOON-READY
read line
echo "MM-BALLOON-GUEST $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
"""
    initrd = initramfs(work, script)
    res = boot(guest_host, kernel, initrd, "--memory", 512, "--balloon", 256)
    report = lines(res.stdout, "MM-BALLOON ")
    assert report, res.stdout[-4000:]
    fields = dict(kv.split("=") for kv in report[0].split()[1:])
    assert int(fields["actual"]) == 256 * 256
    assert int(fields["inflated"]) >= 200 * 256
    assert int(fields["before"]) - int(fields["after"]) >= 96 << 20  # host pages really returned
    assert "MM-HOST exit=poweroff" in res.stdout


if __name__ == "__main__":
    sys.exit(main())
