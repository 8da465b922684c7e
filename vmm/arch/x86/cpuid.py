"""Per-vCPU CPUID from KVM_GET_SUPPORTED_CPUID: filtered, with our topology.

Topology: one socket, `ncpus` cores, one thread per core; vCPU i has APIC ID i. We
rewrite only the topology fields (leaf 1 EBX/EDX.HTT, leaf 4 sharing counts, leaves
0xB/0x1F x2APIC levels, 0x8000_0008 ECX core count, 0x8000_001E) and set the
hypervisor bit, plus leaf 1 ECX.TSC_DEADLINE exactly when the in-kernel LAPIC emulates it:
KVM never lists that bit in KVM_GET_SUPPORTED_CPUID (KVM_CAP_TSC_DEADLINE_TIMER says
it), and without it Linux calibrates the LAPIC timer against the PIT at boot, which
costs real time under emulation. Everything KVM reports otherwise is kept, and the hypervisor leaves
(0x4000_0000-0x4FFF_FFFF: KVM / PVM signature and features, kvm-clock bits) are passed
through unchanged, because PVM guests depend on them.
"""
from __future__ import annotations

from vmm.errors import ConfigError
from vmm.kvm import structs as S

HYPERVISOR_LEAVES = range(0x4000_0000, 0x5000_0000)
SIGNIFICANT_INDEX = 1  # KVM_CPUID_FLAG_SIGNIFCANT_INDEX
LEAF1_ECX_HYPERVISOR = 1 << 31
LEAF1_EDX_HTT = 1 << 28
LEAF1_ECX_TSC_DEADLINE = 1 << 24


def apic_id_bits(ncpus: int) -> int:
    """Bits of APIC ID needed to number `ncpus` cores."""
    return max(0, (ncpus - 1).bit_length())


def _topology_leaf(function: int, index: int, apic_id: int, ncpus: int) -> S.kvm_cpuid_entry2:
    e = S.kvm_cpuid_entry2(function=function, index=index, flags=SIGNIFICANT_INDEX, edx=apic_id)
    if index == 0:      # SMT level: one thread per core
        e.eax, e.ebx, e.ecx = 0, 1, (1 << 8) | index
    elif index == 1:    # core level: all our vCPUs
        e.eax, e.ebx, e.ecx = apic_id_bits(ncpus), ncpus, (2 << 8) | index
    else:               # terminator (level type 0)
        e.ecx = index
    return e


def vcpu_cpuid(supported, index: int, ncpus: int, tsc_deadline: bool = False) -> list[S.kvm_cpuid_entry2]:
    """CPUID entries for vCPU `index` of `ncpus` (copies; `supported` is not changed).
    `tsc_deadline`: KVM_CAP_TSC_DEADLINE_TIMER holds and the VM has an in-kernel LAPIC."""
    if not 0 <= index < ncpus or ncpus > 255:
        raise ConfigError(f"vCPU {index} of {ncpus} is out of range", "use 1-255 vCPUs")
    out: list[S.kvm_cpuid_entry2] = []
    topology_done: set[int] = set()
    for src in supported:
        e = S.kvm_cpuid_entry2.from_buffer_copy(src)
        f = e.function
        if f in HYPERVISOR_LEAVES:
            pass
        elif f == 1:
            e.ebx = (e.ebx & 0x0000FFFF) | (index << 24) | (ncpus << 16)
            e.ecx |= LEAF1_ECX_HYPERVISOR
            e.ecx = e.ecx | LEAF1_ECX_TSC_DEADLINE if tsc_deadline else e.ecx & ~LEAF1_ECX_TSC_DEADLINE
            e.edx = e.edx | LEAF1_EDX_HTT if ncpus > 1 else e.edx & ~LEAF1_EDX_HTT
        elif f == 4 and e.eax & 0x1F:   # (type 0 ends the cache list: left as is)
            level = (e.eax >> 5) & 0x7
            sharing = ncpus - 1 if level == 3 else 0
            # EAX[31:26] has 6 bits: more than 64 cores saturates, as on real parts.
            e.eax = (e.eax & 0x3FFF) | (sharing << 14) | (min(ncpus - 1, 63) << 26)
        elif f in (0xB, 0x1F):
            if f not in topology_done:
                topology_done.add(f)
                out.extend(_topology_leaf(f, i, index, ncpus) for i in range(3))
            continue
        elif f == 0x8000_0008:
            e.ecx = (e.ecx & ~0xF0FF) | (ncpus - 1) | (apic_id_bits(ncpus) << 12)
        elif f == 0x8000_001E:
            e.eax = index
            e.ebx = index & 0xFF
            e.ecx = 0
        out.append(e)
    return out


def find(entries, function: int, index: int = 0) -> S.kvm_cpuid_entry2 | None:
    for e in entries:
        if e.function == function and (e.index == index or not e.flags & SIGNIFICANT_INDEX):
            return e
    return None
