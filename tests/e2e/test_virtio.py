"""virtio-blk, virtio-rng and virtio-balloon with a real Linux guest (our kernel's own
virtio-mmio drivers), where real guests run (the lab on this PVM host).

Each test builds a busybox initramfs whose /init exercises the devices and prints `MM-…`
lines, and boots it with tests/e2e/virtio_guest/runner.py on the guest host (our VMM,
through vmm.machine.Machine); the checks happen here afterwards. Network and vsock are in
test_virtio_net.py and test_virtio_vsock.py.
"""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.e2e.virtio_guest import boot, guest_kernel, initramfs, lines


@pytest.fixture(scope="module")
def kernel() -> str:
    return guest_kernel()


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
    # Without free page reporting, which would otherwise return the freed tmpfs pages on
    # its own before the inflation starts (how the CI run at 07f3fde saw 40 MB come back).
    res = boot(guest_host, kernel, initrd, "--memory", 512, "--balloon", 256,
               "--balloon-spec", "0,reporting=off")
    report = lines(res.stdout, "MM-BALLOON ")
    assert report, res.stdout[-4000:]
    fields = dict(kv.split("=") for kv in report[0].split()[1:])
    assert int(fields["actual"]) == 256 * 256
    assert int(fields["inflated"]) >= 200 * 256
    assert int(fields["before"]) - int(fields["after"]) >= 96 << 20, fields  # host pages really returned
    assert "MM-HOST exit=poweroff" in res.stdout



def test_free_page_reporting_returns_freed_memory_without_inflating(guest_host, kernel):
    work = Path(guest_host.workdir)
    script = """
mount -t tmpfs -o size=200m tmpfs /tmp
dd if=/dev/zero of=/tmp/fill bs=1M count=128 2>/dev/null
echo MM-BALLOON-FILLED
read line
rm /tmp/fill
echo MM-BALLOON-FREED
read line
"""
    initrd = initramfs(work, script)
    res = boot(guest_host, kernel, initrd, "--memory", 512, "--balloon-watch")
    report = lines(res.stdout, "MM-BALLOON-REPORTING")
    assert report, res.stdout[-4000:]
    fields = dict(kv.split("=") for kv in report[0].split()[1:])
    assert int(fields["peak"]) >= 128 << 20, fields  # the guest's file really was in host memory
    assert int(fields["actual"]) == 0, fields  # nothing inflated: this is reporting alone
    assert int(fields["peak"]) - int(fields["after"]) >= 64 << 20, fields
    assert int(fields["reported"]) >= 64 << 20, fields
    assert "MM-HOST exit=poweroff" in res.stdout
