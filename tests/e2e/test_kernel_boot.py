"""Our guest kernel boots under QEMU microvm (where real guests run) to a marker line, and exits."""
from __future__ import annotations

import pytest

from vmm import kernel
from vmm.kernel.smoke import microvm_argv, parse_report, tiny_initramfs


@pytest.fixture(scope="module")
def vmlinux():
    if not kernel.is_built():
        pytest.skip("the guest kernel is not built: run `mm kernel build`")
    return kernel.kernel_path("vmlinux")


# SMP at the lab's own vCPU count: more L2 vCPUs than L1 ones under TCG has stalled for minutes.
@pytest.mark.parametrize("cpus, memory_mib", [(1, 256), (2, 1024)])
def test_kernel_reaches_init_and_exits(guest_host, vmlinux, cpus, memory_mib):
    initrd = tiny_initramfs(guest_host.workdir / "init.cpio")
    res = guest_host.run(microvm_argv(vmlinux, initrd, cpus=cpus, memory_mib=memory_mib), timeout=120)
    console = res.stdout + res.stderr
    report = parse_report(console)
    assert report is not None, console[-3000:]
    assert report.cpus == cpus
    assert memory_mib * 1024 * 0.8 < report.mem_kb <= memory_mib * 1024
    assert res.returncode == 0, console[-3000:]  # the guest's reboot ended QEMU (-no-reboot)
    # ACPI (MADT/FADT/DSDT from the VMM) must load: 6.1 without CONFIG_PCI silently could not.
    assert "Unable to load the System Description Tables" not in console
