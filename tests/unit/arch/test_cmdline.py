"""Kernel command line assembly, including the virtio-mmio device announcements."""
import pytest

from vmm.arch.x86 import boot, layout
from vmm.arch.x86.loader import KernelError
from vmm.machine import DEFAULT_CMDLINE


def test_base_extra_and_mmio_devices_in_order():
    line = boot.assemble_cmdline("console=ttyS0  ", ["quiet", ""], [(0xD0000000, 5), (0xD0001000, 6)])
    assert line == ("console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5 "
                    "virtio_mmio.device=4K@0xd0001000:6")


def test_default_cmdline_uses_our_console_and_reboot_method():
    assert "console=ttyS0" in DEFAULT_CMDLINE and "reboot=k" in DEFAULT_CMDLINE


def test_too_long_or_nul_is_refused():
    with pytest.raises(KernelError):
        boot.assemble_cmdline("x" * layout.CMDLINE_MAX)
    with pytest.raises(KernelError):
        boot.assemble_cmdline("a\0b")
