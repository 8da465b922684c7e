"""CPUID filtering and MSR selection, on synthetic KVM answers (no /dev/kvm needed)."""
from __future__ import annotations

import pytest

from vmm.arch.x86 import cpuid, msrs
from vmm.errors import ConfigError
from vmm.kvm.structs import kvm_cpuid_entry2


def E(function, index=0, eax=0, ebx=0, ecx=0, edx=0, flags=0):
    return kvm_cpuid_entry2(function=function, index=index, flags=flags, eax=eax, ebx=ebx,
                            ecx=ecx, edx=edx)


SUPPORTED = [
    E(0, eax=0x1F, ebx=0x756E6547),
    E(1, eax=0xA0671, ebx=0x00FF0800, ecx=0x01202000, edx=0x1F8BFBFF | (1 << 28)),
    E(4, 0, eax=0x121 | (7 << 26), flags=1),   # L1d
    E(4, 3, eax=0x163 | (7 << 26) | (15 << 14), flags=1),   # L3
    E(4, 4, eax=0, flags=1),                   # end of list
    E(0xB, 0, eax=1, ebx=2, ecx=0x100, edx=9, flags=1),
    E(0xB, 1, eax=4, ebx=16, ecx=0x201, edx=9, flags=1),
    E(0x1F, 0, eax=1, ebx=2, ecx=0x100, flags=1),
    E(0x4000_0000, eax=0x4000_0001, ebx=0x4B4D564B, ecx=0x564B4D56, edx=0x4D),
    E(0x4000_0001, eax=0x0100_7EFB, edx=0x1234),
    E(0x8000_0008, eax=0x3930, ecx=0xF007),
]


def by_key(entries):
    return {(e.function, e.index): e for e in entries}


@pytest.mark.parametrize("index,ncpus", [(0, 1), (1, 4), (7, 8), (200, 255)])
def test_topology(index, ncpus):
    out = by_key(cpuid.vcpu_cpuid(SUPPORTED, index, ncpus))
    leaf1 = out[(1, 0)]
    assert leaf1.ebx >> 24 == index
    assert (leaf1.ebx >> 16) & 0xFF == ncpus
    assert leaf1.ebx & 0xFFFF == 0x0800               # CLFLUSH size kept
    assert leaf1.ecx & cpuid.LEAF1_ECX_HYPERVISOR
    assert bool(leaf1.edx & cpuid.LEAF1_EDX_HTT) == (ncpus > 1)
    assert out[(4, 0)].eax >> 26 == min(ncpus - 1, 63)
    assert (out[(4, 0)].eax >> 14) & 0xFFF == 0      # L1 is per core
    assert (out[(4, 3)].eax >> 14) & 0xFFF == ncpus - 1  # L3 shared by all
    assert out[(4, 4)].eax == 0                      # terminator untouched
    for leaf in (0xB, 0x1F):
        smt, core, end = out[(leaf, 0)], out[(leaf, 1)], out[(leaf, 2)]
        assert {smt.edx, core.edx, end.edx} == {index}
        assert (smt.ebx, (smt.ecx >> 8) & 0xFF) == (1, 1)
        assert (core.ebx, (core.ecx >> 8) & 0xFF) == (ncpus, 2)
        assert (1 << core.eax) >= ncpus
        assert (end.ecx >> 8) & 0xFF == 0
        assert all(e.flags & cpuid.SIGNIFICANT_INDEX for e in (smt, core, end))
    ext = out[(0x8000_0008, 0)]
    assert ext.ecx & 0xFF == ncpus - 1
    assert (ext.ecx >> 12) & 0xF == cpuid.apic_id_bits(ncpus)


def test_tsc_deadline_bit_only_when_asked():
    # KVM does not list TSC_DEADLINE in KVM_GET_SUPPORTED_CPUID (it needs the in-kernel
    # LAPIC); the VMM sets it with one and clears it without.
    deadline = cpuid.LEAF1_ECX_TSC_DEADLINE
    for src_ecx in (SUPPORTED[1].ecx & ~deadline, SUPPORTED[1].ecx | deadline):
        supported = list(SUPPORTED)
        supported[1] = E(1, eax=SUPPORTED[1].eax, ebx=SUPPORTED[1].ebx, ecx=src_ecx, edx=SUPPORTED[1].edx)
        assert not by_key(cpuid.vcpu_cpuid(supported, 0, 1))[(1, 0)].ecx & deadline
        leaf1 = by_key(cpuid.vcpu_cpuid(supported, 0, 1, tsc_deadline=True))[(1, 0)]
        assert leaf1.ecx == src_ecx | deadline | cpuid.LEAF1_ECX_HYPERVISOR


def test_hypervisor_leaves_pass_through_unchanged():
    out = by_key(cpuid.vcpu_cpuid(SUPPORTED, 2, 4))
    for e in SUPPORTED:
        if e.function >= 0x4000_0000 and e.function < 0x5000_0000:
            assert bytes(out[(e.function, e.index)]) == bytes(e)


def test_input_is_not_modified():
    before = [bytes(e) for e in SUPPORTED]
    cpuid.vcpu_cpuid(SUPPORTED, 3, 4)
    assert [bytes(e) for e in SUPPORTED] == before


@pytest.mark.parametrize("index,ncpus", [(4, 4), (-1, 2), (0, 0), (0, 256)])
def test_bad_topology(index, ncpus):
    with pytest.raises(ConfigError):
        cpuid.vcpu_cpuid(SUPPORTED, index, ncpus)


class FakeKvm:
    """Only what msrs.boot_msrs reads: the MSR index list."""
    msr_index_list = (0x10, 0x10A, 0x174, 0x175, 0x176, 0x1A0, 0xC000_0081, 0xC000_0082)


def test_boot_msrs_only_from_the_index_list():
    chosen = msrs.boot_msrs(FakeKvm())
    assert set(chosen) <= set(FakeKvm.msr_index_list)
    assert chosen[msrs.MSR_IA32_MISC_ENABLE] == msrs.MISC_ENABLE_FAST_STRING
    assert msrs.MSR_MTRR_DEF_TYPE not in chosen           # not listed here
    assert msrs.MSR_ARCH_CAPABILITIES not in chosen       # a feature MSR: never forced
