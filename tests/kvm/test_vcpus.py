"""vCPU threads: several vCPUs start and halt with their own topology; pause/resume."""
from __future__ import annotations

import threading
import time

from vmm._fast.runloop import RunExit
from vmm.vcpus import State

from tests.kvm.guest import TestVm

# Each vCPU reports its initial APIC ID (CPUID.1:EBX[31:24]) and x2APIC ID (CPUID.0xB:EDX).
REPORT_IDS = """
    mov eax, 1; cpuid; shr ebx, 24; mov eax, ebx; mov dx, 0x500; out dx, eax
    mov eax, 0xb; xor ecx, ecx; cpuid; mov eax, edx; mov dx, 0x504; out dx, eax
    mov dx, 0x508; out dx, eax
    1: hlt; jmp 1b
"""


class IdPorts:
    """0x500: APIC ID, 0x504: x2APIC ID, 0x508: done (stops the VM after `n` dones)."""

    def __init__(self, n, stop=None):
        self.n, self.stop = n, stop
        self.apic, self.x2apic, self.done = [], [], 0
        self.lock = threading.Lock()

    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        with self.lock:
            if offset == 0:
                self.apic.append(value)
            elif offset == 4:
                self.x2apic.append(value)
            else:
                self.done += 1
                if self.done == self.n and self.stop:
                    self.stop()


def test_four_vcpus_start_and_halt(kvm):
    with TestVm(kvm, REPORT_IDS, ncpus=4) as t:
        ports = IdPorts(4)
        t.pio.register(0x500, 12, ports)
        exits = t.run(timeout=20)
        assert sorted(exits) == [0, 1, 2, 3]
        assert all(e.reason == RunExit.HLT for e in exits.values())
        assert sorted(ports.apic) == [0, 1, 2, 3]
        assert sorted(ports.x2apic) == [0, 1, 2, 3]


def test_four_vcpus_with_in_kernel_irqchip(kvm):
    # With the in-kernel LAPIC, HLT stays in the kernel; the guest says it is done
    # through a port whose handler stops all vCPUs.
    with TestVm(kvm, REPORT_IDS, ncpus=4, irqchip=True) as t:
        ports = IdPorts(4, stop=t.vcpus.request_stop)
        t.pio.register(0x500, 12, ports)
        exits = t.run(timeout=20)
        assert ports.done == 4 and sorted(ports.apic) == [0, 1, 2, 3]
        assert all(e.reason is None and e.error is None for e in exits.values())


COUNT_FOREVER = """
    mov eax, 1; cpuid; shr ebx, 24; lea rbx, [0x5000 + rbx * 8]
    1: inc qword ptr [rbx]; jmp 1b
"""


def test_pause_resume(kvm):
    with TestVm(kvm, COUNT_FOREVER, ncpus=2) as t:
        t.vcpus.start()
        time.sleep(0.1)
        for _ in range(3):
            t0 = time.monotonic()
            t.vcpus.pause(timeout=2)
            latency = time.monotonic() - t0
            assert all(th.state is State.PAUSED for th in t.vcpus.threads)
            counts = [t.mem.read_u64(0x5000 + 8 * i) for i in range(2)]
            rips = [v.get_regs().rip for v in t.vm.vcpus]   # state is readable while paused
            time.sleep(0.05)
            assert [t.mem.read_u64(0x5000 + 8 * i) for i in range(2)] == counts
            assert [v.get_regs().rip for v in t.vm.vcpus] == rips
            assert all(c > 0 for c in counts)
            assert latency < 1.0
            t.vcpus.resume()
            time.sleep(0.05)
            later = [t.mem.read_u64(0x5000 + 8 * i) for i in range(2)]
            assert all(b > a for a, b in zip(counts, later))
        t.vcpus.stop()
        assert all(th.state is State.EXITED for th in t.vcpus.threads)


def test_pause_before_start_and_stop_while_paused(kvm):
    with TestVm(kvm, COUNT_FOREVER) as t:
        t.vcpus.pause(timeout=1)        # nothing running yet: returns at once
        t.vcpus.resume()
        t.vcpus.start()
        time.sleep(0.05)
        t.vcpus.pause(timeout=2)
        t.vcpus.stop(timeout=2)
        assert t.vcpus.wait(timeout=1)[0].reason is None


def test_pause_inside_an_in_completes_the_read(kvm):
    # The device asks for a pause while the guest's IN is still pending; after the
    # pause the value must already be in RAX and RIP past the IN (snapshot consistency).
    src = "mov dx, 0x600; in eax, dx; mov rbx, 1; mov qword ptr [0x5000], rbx; 1: jmp 1b"
    with TestVm(kvm, src) as t:
        asked = threading.Event()

        class Port:
            def read(self, offset, size):
                t.vcpus.request_pause()
                asked.set()
                return 0xFEEDF00D

            def write(self, offset, size, value):
                pass

        t.pio.register(0x600, 4, Port())
        t.vcpus.start()
        assert asked.wait(5)
        t.vcpus.pause(timeout=2)
        r = t.vm.vcpus[0].get_regs()
        assert r.rax & 0xFFFFFFFF == 0xFEEDF00D
        assert r.rbx == 0   # completed the IN, but did not run on
        t.vcpus.resume()
        # Watch memory, not registers: KVM_GET_REGS waits for a running vCPU to exit.
        deadline = time.monotonic() + 2
        while t.mem.read_u64(0x5000) != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t.mem.read_u64(0x5000) == 1


def test_exit_details_for_an_internal_error(kvm):
    from vmm.vcpus import exit_details

    # On PVM, int3 without an IDT ends in an emulation failure; on hardware KVM the
    # exception cascade is a triple fault (SHUTDOWN). Either way the exit is reported.
    with TestVm(kvm, "int3") as t:
        exit_ = t.run()[0]
        assert exit_.reason in (RunExit.INTERNAL_ERROR, RunExit.SHUTDOWN)
        text = exit_details(t.vm.vcpus[0], exit_.reason)
        assert text.startswith(exit_.reason.name)


def test_where_a_stopped_vcpu_stopped(kvm):
    from vmm.vcpus import where_stopped

    with TestVm(kvm, "int3") as t:
        t.run()
        regs = t.vm.vcpus[0].get_regs()
        text = where_stopped(t.vm.vcpus[0])
        assert text.startswith(f" at rip={regs.rip:#x} rsp={regs.rsp:#x} (cr0=") and " cr3=" in text


def test_where_says_nothing_when_kvm_will_not():
    from vmm.vcpus import where_stopped

    class Gone:
        def get_regs(self):
            raise OSError(9, "Bad file descriptor")

    assert where_stopped(Gone()) == ""
