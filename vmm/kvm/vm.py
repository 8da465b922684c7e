"""`Vm`: a KVM VM fd (memory slots, irqchip, PIT, irq lines, irqfd/ioeventfd, dirty
log, kvm-clock, and the VM-level state a snapshot saves).
"""
from __future__ import annotations

import ctypes as C
import os

from vmm.kvm import abi as A
from vmm.kvm import structs as S
from vmm.kvm.ioctl import _ioctl

# Where KVM (on Intel) parks the real-mode TSS and identity page table: three pages
# just below the 4 GiB BIOS area, inside the MMIO hole, as QEMU and Firecracker do.
TSS_ADDRESS = 0xFFFB_D000
IDENTITY_MAP_ADDRESS = 0xFFFB_C000


class Vm:
    """A VM fd owned by this object; made by `Kvm.create_vm()`."""

    def __init__(self, kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd
        self.vcpus: list = []
        self.has_irqchip = False
        self.has_pit = False

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Close every vCPU (unmapping its kvm_run) and the VM: stop the vCPU threads
        first (Vcpus.stop), since a running loop reads kvm_run."""
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Vm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_extension(self, cap: int | str) -> int:
        if isinstance(cap, str):
            cap = A.CONSTANTS[cap]
        return _ioctl(self.fd, "KVM_CHECK_EXTENSION", cap)

    # -- platform ---------------------------------------------------------------------
    def setup_x86(self, irqchip: bool = True, pit: bool = True) -> None:
        """TSS + identity-map addresses, and (optionally) the in-kernel PIC/IOAPIC/LAPIC
        and PIT. Without an irqchip, HLT exits to userspace (handy for test guests)."""
        self.set_tss_addr(TSS_ADDRESS)
        self.set_identity_map_addr(IDENTITY_MAP_ADDRESS)
        if irqchip:
            self.create_irqchip()
            if pit:
                self.create_pit2()

    def set_tss_addr(self, addr: int) -> None:
        _ioctl(self.fd, "KVM_SET_TSS_ADDR", addr)

    def set_identity_map_addr(self, addr: int) -> None:
        _ioctl(self.fd, "KVM_SET_IDENTITY_MAP_ADDR", C.c_uint64(addr))

    def create_irqchip(self) -> None:
        _ioctl(self.fd, "KVM_CREATE_IRQCHIP", 0)
        self.has_irqchip = True

    def create_pit2(self, flags: int = A.KVM_PIT_SPEAKER_DUMMY) -> None:
        cfg = S.kvm_pit_config(flags=flags)
        _ioctl(self.fd, "KVM_CREATE_PIT2", cfg)
        self.has_pit = True

    # -- memory -------------------------------------------------------------------------
    def set_user_memory_region(self, slot: int, gpa: int, size: int, host_addr: int,
                               flags: int = 0) -> None:
        """Map (or with size 0, remove) a slot. Flags: KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY."""
        region = S.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=gpa,
                                               memory_size=size, userspace_addr=host_addr)
        _ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION", region)

    def get_dirty_log(self, slot: int, npages: int) -> bytearray:
        """The slot's dirty bitmap (bit n = page n written since the last call); clears it."""
        nbytes = ((npages + 63) // 64) * 8
        bitmap = (C.c_uint8 * nbytes)()
        log = S.kvm_dirty_log(slot=slot, dirty_bitmap=C.addressof(bitmap))
        _ioctl(self.fd, "KVM_GET_DIRTY_LOG", log)
        return bytearray(bitmap)

    # -- interrupts -----------------------------------------------------------------------
    def irq_line(self, irq: int, level: int) -> None:
        _ioctl(self.fd, "KVM_IRQ_LINE", S.kvm_irq_level(irq=irq, level=level))

    def irqfd(self, fd: int, gsi: int, resamplefd: int | None = None, deassign: bool = False) -> None:
        flags = (A.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0)
        if resamplefd is not None:
            flags |= A.KVM_IRQFD_FLAG_RESAMPLE
        req = S.kvm_irqfd(fd=fd, gsi=gsi, flags=flags, resamplefd=resamplefd or 0)
        _ioctl(self.fd, "KVM_IRQFD", req)

    def ioeventfd(self, fd: int, addr: int, length: int, datamatch: int | None = None,
                  pio: bool = False, deassign: bool = False) -> None:
        flags = (A.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (A.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        if datamatch is not None:
            flags |= A.KVM_IOEVENTFD_FLAG_DATAMATCH
        req = S.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags)
        _ioctl(self.fd, "KVM_IOEVENTFD", req)

    # -- state (snapshots) --------------------------------------------------------------
    def get_clock(self) -> S.kvm_clock_data:
        data = S.kvm_clock_data()
        _ioctl(self.fd, "KVM_GET_CLOCK", data)
        return data

    def set_clock(self, data: S.kvm_clock_data) -> None:
        _ioctl(self.fd, "KVM_SET_CLOCK", data)

    def get_irqchip(self, chip_id: int) -> S.kvm_irqchip:
        chip = S.kvm_irqchip(chip_id=chip_id)
        _ioctl(self.fd, "KVM_GET_IRQCHIP", chip)
        return chip

    def set_irqchip(self, chip: S.kvm_irqchip) -> None:
        _ioctl(self.fd, "KVM_SET_IRQCHIP", chip)

    def get_pit2(self) -> S.kvm_pit_state2:
        state = S.kvm_pit_state2()
        _ioctl(self.fd, "KVM_GET_PIT2", state)
        return state

    def set_pit2(self, state: S.kvm_pit_state2) -> None:
        _ioctl(self.fd, "KVM_SET_PIT2", state)

    # -- vCPUs ----------------------------------------------------------------------------
    def create_vcpu(self, index: int):
        from vmm.kvm.vcpu import Vcpu

        vcpu = Vcpu(self, index, _ioctl(self.fd, "KVM_CREATE_VCPU", index))
        self.vcpus.append(vcpu)
        return vcpu
