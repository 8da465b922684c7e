"""`mm boot` boots our guest kernel with a busybox initramfs where real guests run (the
lab on a PVM host): CPU count and memory as configured (1 and 4 vCPUs; 128 MiB, 2 GiB and
5 GiB, across the MMIO hole), as an ELF vmlinux (PVH) and as a bzImage (64-bit boot
protocol), with no kernel WARN splat (our CPUID and XCR0 agree with what Linux checks);
poweroff / reboot / panic reported as distinct exit statuses. Bad kernel files fail
cleanly without any guest.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from vmm import paths

MiB, GiB = 1 << 20, 1 << 30
MM = str(paths.REPO_ROOT / ".venv" / "bin" / "mm")
BOOT_TIMEOUT = 300


def _initramfs_module():
    spec = importlib.util.spec_from_file_location(
        "boot_initramfs", paths.REPO_ROOT / "benchmarks" / "boot" / "initramfs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


initramfs = _initramfs_module()


@pytest.fixture(scope="module")
def kernel() -> str:
    try:
        from vmm.kernel import kernel_path
    except ImportError:
        pytest.skip("vmm.kernel is not available: the guest kernel cannot be located")
    try:
        path = kernel_path("vmlinux")
    except Exception as exc:  # KernelNotBuilt and friends: MMError with a hint
        pytest.skip(f"guest kernel not built ({exc}); run `mm kernel build`")
    return str(path)


@pytest.fixture(scope="module")
def bzimage(kernel) -> str:
    from pathlib import Path

    path = Path(kernel).with_name("bzImage")
    if not path.is_file():
        pytest.skip(f"no bzImage next to {kernel} (MM_KERNEL names a vmlinux only)")
    return str(path)


@pytest.fixture(scope="module")
def rootfs() -> str:
    # The cache directory is shared read-write at the same path with the lab.
    return str(initramfs.build(paths.cache_dir() / "boot"))


def boot(guest_host, kernel, rootfs, cpus=1, memory="128m", action="poweroff"):
    argv = [MM, "boot", "--kernel", kernel, "--initrd", rootfs, "--cpus", str(cpus),
            "--memory", memory, "--append", "quiet", "--append", f"mmaction={action}"]
    return guest_host.run(argv, timeout=BOOT_TIMEOUT)


@pytest.mark.parametrize("cpus, memory, ram", [(1, "128m", 128 * MiB), (4, "2g", 2 * GiB),
                                               (4, "5g", 5 * GiB)])
def test_guest_sees_cpus_and_memory_then_powers_off(guest_host, kernel, rootfs, cpus, memory, ram):
    result = boot(guest_host, kernel, rootfs, cpus=cpus, memory=memory)
    report = initramfs.parse_report(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert initramfs.MARKER in result.stdout
    assert report["cpus"] == cpus
    # MemTotal is RAM minus what the kernel keeps for itself (a few MiB plus its image).
    total = report["mem_kb"] * 1024
    assert ram * 0.85 < total <= ram, report
    if ram > 3 * GiB:
        assert total > 4 * GiB  # the RAM above the MMIO hole is in use
    assert report["warnings"] == 0, result.stdout[-3000:]


def test_bzimage_boots_through_the_64bit_protocol(guest_host, bzimage, rootfs):
    result = boot(guest_host, bzimage, rootfs, cpus=2, memory="256m")
    report = initramfs.parse_report(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert report["cpus"] == 2 and 200 * 1024 < report["mem_kb"] <= 256 * 1024, report
    assert report["warnings"] == 0, result.stdout[-3000:]


def test_guest_panic_is_reported(guest_host, kernel, rootfs):
    result = boot(guest_host, kernel, rootfs, action="panic")
    assert "MM-PANIC" in result.stdout
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-2000:]
    assert "guest ended: panic" in result.stderr


def test_guest_reboot_is_reported(guest_host, kernel, rootfs):
    result = boot(guest_host, kernel, rootfs, action="reboot")
    assert initramfs.MARKER in result.stdout
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-2000:]
    assert "guest ended: reboot" in result.stderr


def _mm(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmm", *args], capture_output=True, text=True,
                          timeout=60)


def test_missing_kernel_is_a_clear_error(tmp_path):
    result = _mm("boot", "--kernel", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "error: kernel" in result.stderr and "does not exist" in result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.stderr


def test_non_kernel_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00not a kernel\x00" * 1000)
    result = _mm("boot", "--kernel", str(junk))
    assert result.returncode == 1
    assert "is not a Linux kernel" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr
