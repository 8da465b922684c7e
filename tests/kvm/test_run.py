"""Tiny guests on this host's /dev/kvm: 64-bit setup, PIO/MMIO dispatch, memory both ways."""
from __future__ import annotations

import pytest

from vmm._fast.runloop import RunExit, ScratchPort
from vmm.arch.x86 import regs
from vmm.memory import GiB, MiB

from tests.kvm.guest import CODE_ADDR, TestVm, assemble


class Recorder:
    """A Python BusDevice that logs accesses and answers reads with `answer + offset`."""

    def __init__(self, answer=0x1122334455667788):
        self.log = []
        self.answer = answer

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return self.answer + offset

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


def test_long_mode_setup_runs(kvm):
    src = "mov rax, 0x1234567890; mov rbx, rsp; hlt"
    with TestVm(kvm, src) as t:
        exits = t.run()
        assert exits[0].reason == RunExit.HLT
        v = t.vm.vcpus[0]
        r, s = v.get_regs(), v.get_sregs()
        assert r.rax == 0x1234567890
        assert r.rbx == 0x8FF0
        assert s.efer & regs.EFER_LMA and s.cs.l == 1 and s.cs.selector == regs.CODE64_SEL
        assert s.cr0 & regs.X86_CR0_PG and s.cr4 & regs.X86_CR4_PAE
        assert r.rip == CODE_ADDR + len(assemble(src))   # just past the hlt


def test_pio_reaches_the_right_handler(kvm):
    src = """
        mov dx, 0x3f9; mov al, 0x41; out dx, al      # serial-ish device, offset 1
        mov dx, 0x70;  mov ax, 0xbeef; out dx, ax     # second device, 2 bytes
        mov dx, 0x72;  mov eax, 0xcafef00d; out dx, eax
        mov dx, 0x3fd; in al, dx; mov r8, rax         # read: 0x..88 + 5
        mov dx, 0x80;  in al, dx; mov r9, rax         # constant range, served in C
        mov dx, 0x510; mov eax, 0x12345678; out dx, eax  # ScratchPort, served in C
        xor eax, eax; in eax, dx; mov r10, rax
        mov dx, 0x999; in al, dx; mov r11, rax        # nothing there: 0xff
        mov dx, 0x999; out dx, al
        hlt
    """
    with TestVm(kvm, src) as t:
        serial, rtc, scratch = Recorder(), Recorder(), ScratchPort()
        t.pio.register(0x3F8, 8, serial)
        t.pio.register(0x70, 6, rtc)
        t.pio.register_constant(0x80, 1, 0x5A)
        t.pio.register(0x510, 4, scratch)
        assert t.run()[0].reason == RunExit.HLT
        r = t.vm.vcpus[0].get_regs()
        assert serial.log == [("w", 1, 1, 0x41), ("r", 5, 1)]
        assert rtc.log == [("w", 0, 2, 0xBEEF), ("w", 2, 4, 0xCAFEF00D)]
        assert r.r8 & 0xFF == (0x88 + 5) & 0xFF
        assert r.r9 & 0xFF == 0x5A
        assert (scratch.writes, scratch.reads, r.r10) == (1, 1, 0x12345678)
        assert r.r11 & 0xFF == 0xFF
        assert t.pio.fast.unhandled == 2


def test_string_pio(kvm):
    src = """
        lea rsi, [rip + msg]; mov rcx, 5; mov dx, 0x3f8; rep outsb
        hlt
        msg: .ascii "hello"
    """
    with TestVm(kvm, src) as t:
        dev = Recorder()
        t.pio.register(0x3F8, 1, dev)
        assert t.run()[0].reason == RunExit.HLT
        assert bytes(e[3] for e in dev.log) == b"hello"


@pytest.mark.parametrize("width,reg,value", [
    (1, "al", 0xA5), (2, "ax", 0xA5B6), (4, "eax", 0xA5B6C7D8), (8, "rax", 0xA5B6C7D8E9F00112)])
def test_mmio_reaches_the_right_handler(kvm, width, reg, value):
    base = 0xD000_0000
    src = f"""
        mov rax, {value:#x}; mov rbx, {base + 0x10:#x}; mov [rbx], {reg}
        mov rbx, {base + 0x1000 + 0x18:#x}; mov {reg}, [rbx]; mov r12, rax
        hlt
    """
    with TestVm(kvm, src) as t:
        first, second = Recorder(), Recorder(answer=0x0102030405060708)
        t.mmio.register(base, 0x1000, first)
        t.mmio.register(base + 0x1000, 0x1000, second)
        assert t.run()[0].reason == RunExit.HLT
        assert first.log == [("w", 0x10, width, value)]
        assert second.log == [("r", 0x18, width)]
        mask = (1 << (8 * width)) - 1
        assert t.vm.vcpus[0].get_regs().r12 & mask == (0x0102030405060708 + 0x18) & mask


def test_guest_memory_both_ways(kvm):
    src = """
        mov rbx, 0x200000; mov rax, [rbx]; add rax, 1; mov [rbx + 8], rax
        mov rbx, 0x140000000; mov rax, [rbx]; not rax; mov [rbx + 8], rax   # above the hole
        hlt
    """
    # 5 GiB: low 3 GiB + 2 GiB above 4 GiB; the identity map must reach 6 GiB.
    with TestVm(kvm, src, memory=5 * GiB, identity_gib=6) as t:
        t.mem.write_u64(0x200000, 41)
        t.mem.write_u64(0x1_4000_0000, 0x0F0F)
        assert t.run()[0].reason == RunExit.HLT
        assert t.mem.read_u64(0x200008) == 42
        assert t.mem.read_u64(0x1_4000_0008) == ~0x0F0F & (2**64 - 1)
        assert len(t.mem.regions) == 2


def test_handler_exception_stops_the_vcpu(kvm):
    class Broken:
        def read(self, offset, size):
            raise RuntimeError("device bug")

        def write(self, offset, size, value):
            raise RuntimeError("device bug")

    with TestVm(kvm, "mov dx, 0x60; out dx, al; hlt") as t:
        t.pio.register(0x60, 1, Broken())
        exit_ = t.run()[0]
        assert exit_.reason == RunExit.HANDLER_ERROR
        assert isinstance(exit_.error, RuntimeError)


def test_dirty_log(kvm):
    src = "mov rbx, 0x300000; mov [rbx], al; mov [rbx + 0x3000], al; hlt"
    with TestVm(kvm, src, memory=8 * MiB) as t:
        t.mem.set_dirty_logging(t.vm, True)
        t.mem.dirty_pages(t.vm, 0)  # drop what setup wrote
        assert t.run()[0].reason == RunExit.HLT
        dirty = t.mem.dirty_pages(t.vm, 0)
        assert 0x300000 in dirty and 0x303000 in dirty
        assert 0x301000 not in dirty
        assert t.mem.dirty_pages(t.vm, 0) == []   # reading clears
        t.mem.set_dirty_logging(t.vm, False)
        assert not t.mem.dirty_logging(0)


def test_kvm_clock_via_the_msr_the_guest_writes(kvm):
    # What a Linux guest's kvm-clock driver does: write MSR_KVM_SYSTEM_TIME_NEW with the
    # address of a pvclock_vcpu_time_info (| 1 = enable); KVM fills it in.
    src = """
        mov ecx, 0x4b564d01; mov eax, 0x5001; xor edx, edx; wrmsr
        mov eax, 0x40000001; cpuid; mov r12, rax          # KVM feature bits
        hlt
    """
    with TestVm(kvm, src) as t:
        assert t.run()[0].reason == RunExit.HLT
        features = t.vm.vcpus[0].get_regs().r12
        assert features & (1 << 3)                       # KVM_FEATURE_CLOCKSOURCE2
        info = t.mem.read(0x5000, 32)
        version = int.from_bytes(info[0:4], "little")
        tsc_to_system_mul = int.from_bytes(info[24:28], "little")
        assert version % 2 == 0 and version > 0          # even: an update completed
        assert tsc_to_system_mul != 0
