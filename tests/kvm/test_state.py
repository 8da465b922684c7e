"""KVM layer on this host: capability checks, errors, and every vCPU / VM state a
snapshot needs reads back what was written."""
from __future__ import annotations

import errno
import os

import pytest

from vmm.arch.x86 import msrs, regs
from vmm.errors import KvmError
from vmm.kvm import REQUIRED_CAPS
from vmm.kvm import abi as A
from vmm.kvm import structs as S
from vmm.memory import GuestMemory, MiB
from vmm.vcpus import configure


@pytest.fixture
def machine(kvm):
    vm = kvm.create_vm()
    vm.setup_x86(irqchip=True, pit=True)
    mem = GuestMemory(4 * MiB)
    mem.register(vm)
    vcpu = vm.create_vcpu(0)
    configure(kvm, vcpu, 1)
    regs.setup_long_mode(vcpu, mem, 0x100000)
    yield vm, vcpu, mem
    vm.close()
    mem.close()


def test_open_and_capabilities(kvm):
    assert kvm.api_version() == 12
    assert kvm.missing_caps() == []
    assert all(kvm.check_extension(c) > 0 for c in REQUIRED_CAPS)
    assert kvm.vcpu_mmap_size >= 4096
    assert kvm.max_vcpus >= 1
    assert len(kvm.supported_cpuid()) > 5
    assert msrs.MSR_IA32_SYSENTER_CS in kvm.msr_index_list


def test_failed_ioctl_names_itself(kvm):
    vm = kvm.create_vm()
    try:
        vm.create_vcpu(0)
        with pytest.raises(KvmError) as e:
            vm.create_vcpu(0)
        assert e.value.ioctl == "KVM_CREATE_VCPU" and e.value.errno == errno.EEXIST
    finally:
        vm.close()


def test_feature_msrs_are_readable_not_forced(kvm, machine):
    _, vcpu, _ = machine
    features = kvm.get_feature_msrs(kvm.msr_feature_list)
    assert set(features) <= set(kvm.msr_feature_list)
    # Boot MSRs were set only from the index list (configure() did not raise).
    got = vcpu.get_msrs(msrs.boot_msrs(kvm))
    assert got[msrs.MSR_IA32_MISC_ENABLE] & msrs.MISC_ENABLE_FAST_STRING


def _roundtrip(get, set_):
    before = get()
    set_(before)
    after = get()
    assert bytes(after) == bytes(before)
    return after


def test_vcpu_state_roundtrips(kvm, machine):
    _, vcpu, _ = machine
    for name in ("regs", "sregs", "fpu", "xcrs", "lapic", "vcpu_events", "debugregs"):
        _roundtrip(getattr(vcpu, f"get_{name}"), getattr(vcpu, f"set_{name}"))
    xs = vcpu.get_xsave()
    vcpu.set_xsave(xs)
    assert vcpu.get_xsave() == xs
    saved = vcpu.get_msrs(msrs.save_list(kvm, vcpu))
    vcpu.set_msrs(saved)
    again = vcpu.get_msrs(saved)
    assert again.pop(msrs.MSR_IA32_TSC) >= saved.pop(msrs.MSR_IA32_TSC)   # it ticks
    assert again == saved
    vcpu.set_mp_state(A.KVM_MP_STATE_RUNNABLE)
    assert vcpu.get_mp_state() == A.KVM_MP_STATE_RUNNABLE
    assert {(e.function, e.index) for e in vcpu.get_cpuid2()} >= {(0, 0), (1, 0), (0x4000_0000, 0)}


def test_lapic_fpu_xcr0_defaults(kvm, machine):
    _, vcpu, _ = machine
    raw = bytes(vcpu.get_lapic())
    lvt0 = int.from_bytes(raw[regs.APIC_LVT0:regs.APIC_LVT0 + 4], "little")
    lvt1 = int.from_bytes(raw[regs.APIC_LVT1:regs.APIC_LVT1 + 4], "little")
    assert (lvt0 >> 8) & 7 == regs.APIC_MODE_EXTINT
    assert (lvt1 >> 8) & 7 == regs.APIC_MODE_NMI
    assert vcpu.get_fpu().fcw == 0x37F
    # KVM_GET_FPU may report MXCSR 0 (seen on kvm_pvm); the xsave legacy area is the truth.
    assert int.from_bytes(vcpu.get_xsave()[24:28], "little") == 0x1F80
    xcrs = vcpu.get_xcrs()
    assert xcrs.nr_xcrs >= 1 and xcrs.xcrs[0].value & (regs.XFEATURE_X87 | regs.XFEATURE_SSE)
    # Every state component CPUID.0xD.0 lists (what Linux enables), not a fixed subset.
    leaf = next(e for e in kvm.supported_cpuid() if (e.function, e.index) == (0xD, 0))
    assert xcrs.xcrs[0].value == (leaf.eax | leaf.edx << 32) | regs.XFEATURE_X87


def test_vm_state_roundtrips(machine):
    vm, _, _ = machine
    for chip_id in (A.KVM_IRQCHIP_PIC_MASTER, A.KVM_IRQCHIP_PIC_SLAVE, A.KVM_IRQCHIP_IOAPIC):
        _roundtrip(lambda: vm.get_irqchip(chip_id), vm.set_irqchip)
    pit = vm.get_pit2()
    vm.set_pit2(pit)
    again = vm.get_pit2()
    for ch in (*pit.channels, *again.channels):
        ch.count_load_time = 0      # KVM restarts the counters "now" on set
    assert bytes(again) == bytes(pit)
    clock = vm.get_clock()
    vm.set_clock(S.kvm_clock_data(clock=clock.clock))
    assert vm.get_clock().clock >= clock.clock
    ioapic = vm.get_irqchip(A.KVM_IRQCHIP_IOAPIC).chip.ioapic
    assert ioapic.base_address == 0xFEC00000


def test_interrupt_plumbing(machine):
    vm, _, _ = machine
    vm.irq_line(4, 1)
    vm.irq_line(4, 0)
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        vm.irqfd(efd, 5)
        os.eventfd_write(efd, 1)
        vm.irqfd(efd, 5, deassign=True)
        vm.ioeventfd(efd, 0xD000_0050, 4)
        vm.ioeventfd(efd, 0xD000_0050, 4, deassign=True)
        vm.ioeventfd(efd, 0x600, 2, datamatch=7, pio=True)
        vm.ioeventfd(efd, 0x600, 2, datamatch=7, pio=True, deassign=True)
    finally:
        os.close(efd)


def test_protected_mode_setup(kvm, machine):
    vm, _, mem = machine
    vcpu = vm.create_vcpu(1)
    regs.setup_protected_mode(vcpu, mem, 0x100000, rbx=0x7000)
    s, r = vcpu.get_sregs(), vcpu.get_regs()
    assert s.cr0 & regs.X86_CR0_PE and not s.cr0 & regs.X86_CR0_PG and s.efer == 0
    assert (s.cs.selector, s.cs.db, s.cs.l, s.cs.limit) == (regs.CODE32_SEL, 1, 0, 0xFFFFFFFF)
    assert s.ds.selector == regs.DATA_SEL and s.ds.base == 0
    assert (r.rip, r.rbx) == (0x100000, 0x7000)
