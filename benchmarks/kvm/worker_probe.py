"""Child process for the worker-start and RSS benchmarks: does what a VM worker does
before its first KVM_RUN, timing each step, and prints one JSON line.

    python [-S] benchmarks/kvm/worker_probe.py MEMORY_MIB [TOUCH_MIB]

Times are time.monotonic() (CLOCK_MONOTONIC, shared with the parent), so the parent
can subtract its own spawn time. The guest is hand-encoded: `out 0x500, al; jmp $`;
the port's handler pauses the loop, so run() returns right after the first exit.
"""
import time

T0 = time.monotonic()

import sys  # noqa: E402

from vmm._fast.runloop import RunLoop  # noqa: E402
from vmm.arch.x86 import regs  # noqa: E402
from vmm.bus import mmio_bus, pio_bus  # noqa: E402
from vmm.kvm import Kvm  # noqa: E402
from vmm.memory import GuestMemory  # noqa: E402
from vmm.vcpus import configure  # noqa: E402

GUEST = bytes.fromhex("66ba0005" "ee" "ebfe")  # mov dx, 0x500; out dx, al; jmp $


def _rss() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "RssAnon", "RssFile", "RssShmem")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def main() -> None:
    mib = int(sys.argv[1])
    touch = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    t = {"start": T0, "imports": time.monotonic()}
    kvm = Kvm()
    t["open_kvm"] = time.monotonic()
    vm = kvm.create_vm()
    vm.setup_x86(irqchip=True, pit=True)
    t["vm"] = time.monotonic()
    mem = GuestMemory(mib << 20)
    mem.register(vm)
    t["memory"] = time.monotonic()
    vcpu = vm.create_vcpu(0)
    configure(kvm, vcpu, 1)
    regs.setup_long_mode(vcpu, mem, 0x100000)
    mem.write(0x100000, GUEST)
    t["vcpu"] = time.monotonic()
    pio, mmio = pio_bus(), mmio_bus()

    class FirstExit:
        def write(self, offset, size, value):
            t["first_exit"] = time.monotonic()
            loop.request_pause()

        def read(self, offset, size):
            return 0

    pio.register(0x500, 1, FirstExit())
    loop = RunLoop(vcpu, pio.fast, mmio.fast)
    t["first_run"] = time.monotonic()
    result = loop.run()
    if touch:
        # Stand-in for a guest that used its memory: dirty `touch` MiB of it.
        page = b"\1" * 4096
        for gpa in range(0x200000, 0x200000 + (touch << 20), 4096):
            mem.write(gpa, page)
    import json  # after the clock stops: a worker does not need it to start

    print(json.dumps({"t": t, "result": int(result), "rss": _rss()}))


main()
