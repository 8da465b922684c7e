"""mm-init in a real guest: `mm boot` with our initrd, the workload's exit status
comes back as the console's `MM-EXIT code=N signal=S` line and the guest powers off.

The result line is also written to /dev/kmsg (a second path to the host). The image is a
busybox cpio appended to the initrd and the boot config names no root (init keeps the initramfs as root); the
root-disk + overlay path is covered on the host by tests/guest/test_init_namespace.py.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from vmm import paths
from vmm.guest import initramfs
from vmm.guest.bootconfig import BootConfig
from vmm.guest.cpio import CpioWriter

MM = str(paths.REPO_ROOT / ".venv" / "bin" / "mm")
BUSYBOX = shutil.which("busybox")


@pytest.fixture(scope="module")
def kernel() -> str:
    try:
        from vmm.kernel import kernel_path
    except ImportError:
        pytest.skip("vmm.kernel is not available: the guest kernel cannot be located")
    try:
        return str(kernel_path("vmlinux"))
    except Exception as exc:  # KernelNotBuilt: an MMError with a hint
        pytest.skip(f"guest kernel not built ({exc}); run `mm kernel build`")


def initrd(name: str, argv: list[str]) -> Path:
    if not BUSYBOX or not shutil.which("musl-gcc"):
        pytest.skip("busybox-static and musl-tools are needed")
    image = CpioWriter()
    image.add_file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    image.add_symlink("bin/sh", "busybox")
    config = BootConfig(argv=argv, root=None, overlay=None, hostname="e2e")
    # The cache is shared read-write with the lab at the same path.
    dest = paths.ensure(paths.cache_dir() / "guest" / "e2e") / f"{name}.cpio"
    dest.write_bytes(initramfs.base_initramfs().read_bytes() + initramfs.config_archive(config)
                     + image.finish())
    return dest


@pytest.mark.parametrize("name, script, code, sig", [
    ("exit42", "echo workload says hi; exit 42", 42, 0),
    ("sigkill", "kill -KILL $$", 137, 9),
])
def test_workload_exit_status_reaches_the_host(kernel, guest_host, name, script, code, sig):
    path = initrd(name, ["/bin/sh", "-c", script])
    result = guest_host.run([MM, "boot", "--kernel", kernel, "--initrd", path, "--memory", "256m"], timeout=600)
    m = re.search(r"MM-EXIT code=(\d+) signal=(\d+)", result.stdout)
    assert m, f"no MM-EXIT line (status {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    assert (int(m.group(1)), int(m.group(2))) == (code, sig)
    assert result.returncode == 0, "the guest should power off (ACPI S5)"


def test_workload_output_on_the_console(kernel, guest_host):
    path = initrd("hello", ["/bin/sh", "-c", "echo workload says hi"])
    result = guest_host.run([MM, "boot", "--kernel", kernel, "--initrd", path, "--memory", "256m"], timeout=600)
    assert "workload says hi" in result.stdout
