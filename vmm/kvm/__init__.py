"""The KVM layer: three owning fd classes over /dev/kvm, one ioctl table, one ioctl helper.

    from vmm.kvm import Kvm
    kvm = Kvm()                          # opens /dev/kvm, checks API 12 + REQUIRED_CAPS
    vm = kvm.create_vm()                 # Vm
    vm.setup_x86(irqchip=True, pit=True) # TSS/identity map, in-kernel PIC/IOAPIC/LAPIC, PIT2
    vm.set_user_memory_region(slot, gpa, size, host_addr, flags)   # usually via vmm.memory
    vcpu = vm.create_vcpu(0)             # Vcpu: get_/set_ regs, sregs, fpu, xsave, xcrs,
                                         # msrs, lapic, cpuid2, mp_state, vcpu_events,
                                         # debugregs; .run (kvm_run), .run_address

Modules: `structs` (ctypes layouts, checked against gcc by a unit test), `abi` (ioctl
numbers and constants, also checked), `ioctl` (`_ioctl` -> KvmError(name, errno)),
`system` (Kvm), `vm` (Vm), `vcpu` (Vcpu). Errors: vmm.errors.KvmError for a failed
ioctl, `KvmUnavailable` / `KvmCapabilityError` (HostError) when the host can't do it.
"""
from vmm.kvm.system import REQUIRED_CAPS, Kvm, KvmCapabilityError, KvmUnavailable
from vmm.kvm.vcpu import Vcpu
from vmm.kvm.vm import Vm

__all__ = ["Kvm", "Vm", "Vcpu", "KvmUnavailable", "KvmCapabilityError", "REQUIRED_CAPS"]
