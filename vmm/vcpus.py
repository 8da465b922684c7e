"""vCPU threads: configure each vCPU, run it on its own host thread, pause/resume all.

    vcpus = Vcpus(kvm, vm, [vm.create_vcpu(i) for i in range(n)], pio, mmio, on_exit)
    vcpus.configure_all()        # CPUID (topology), boot MSRs, FPU, XCR0, LAPIC LINT pins
    ...set entry registers (vmm.arch.x86.regs)...
    vcpus.start()
    vcpus.pause(timeout=1.0)     # every thread parked outside KVM_RUN; state readable
    vcpus.resume()
    exits = vcpus.wait()         # {index: VcpuExit} once every vCPU thread has ended
    vcpus.request_stop()         # from a device handler: end all threads, don't wait
    vcpus.stop()                 # ends all threads and joins them (also from on_exit)

`on_exit(thread, RunExit) -> bool` is called on the vCPU's thread for every exit the
run loop hands back except PAUSED; return True to re-enter the guest, False to end
this vCPU. Pausing sets kvm_run.immediate_exit and sends KICK_SIGNAL to the thread, so
the latency is bounded by one KVM_RUN exit, not by the guest.
"""
from __future__ import annotations

import enum
import signal
import threading
import time
from collections.abc import Callable

from vmm.arch.x86 import cpuid as cpuid_mod
from vmm.arch.x86 import msrs as msrs_mod
from vmm.arch.x86 import regs as regs_mod
from vmm.errors import MMError

KICK_SIGNAL = signal.SIGUSR1


class VcpuError(MMError):
    """A vCPU thread could not be started, paused or resumed."""


class State(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"


class VcpuExit:
    """How a vCPU thread ended: the run loop's RunExit (None when stopped by us) and, for
    HANDLER_ERROR or a failing on_exit, the exception."""

    __slots__ = ("reason", "error")

    def __init__(self, reason, error: BaseException | None = None) -> None:
        self.reason = reason
        self.error = error

    def __repr__(self) -> str:
        return f"VcpuExit({self.reason!r}, error={self.error!r})"


def configure(kvm, vcpu, ncpus: int, supported=None) -> None:
    """CPUID (with this vCPU's topology), boot MSRs, FPU, XCR0 and LAPIC LINT pins."""
    supported = supported if supported is not None else kvm.supported_cpuid()
    deadline = vcpu.vm.has_irqchip and kvm.check_extension("KVM_CAP_TSC_DEADLINE_TIMER") > 0
    vcpu.set_cpuid2(cpuid_mod.vcpu_cpuid(supported, vcpu.index, ncpus, tsc_deadline=deadline))
    vcpu.set_msrs(msrs_mod.boot_msrs(kvm))
    regs_mod.setup_fpu(vcpu)
    regs_mod.setup_xcr0(vcpu, supported)
    if vcpu.vm.has_irqchip:
        regs_mod.setup_lapic(vcpu)


class VcpuThread:
    """One vCPU and the host thread that runs it."""

    def __init__(self, group: "Vcpus", vcpu) -> None:
        from vmm._fast.runloop import RunLoop

        self.group = group
        self.vcpu = vcpu
        self.index = vcpu.index
        self.loop = RunLoop(vcpu, group.pio.fast, group.mmio.fast)
        self.state = State.CREATED
        self.exit: VcpuExit | None = None
        self.thread = threading.Thread(target=self._main, name=f"vcpu{self.index}", daemon=True)

    def _main(self) -> None:
        from vmm._fast.runloop import RunExit

        g = self.group
        try:
            while True:
                with g.cond:
                    while g.want is State.PAUSED:
                        self._set_state(State.PAUSED)
                        g.cond.wait()
                    if g.want is State.EXITED:
                        break
                    self.loop.clear_pause()
                    self._set_state(State.RUNNING)
                result = self.loop.run()
                if result == RunExit.PAUSED:
                    continue
                if result == RunExit.HANDLER_ERROR:
                    self.exit = VcpuExit(result, self.loop.error)
                    break
                if not g.on_exit(self, result):
                    self.exit = VcpuExit(result)
                    break
        except BaseException as e:  # a bug in on_exit: end this vCPU, report it
            self.exit = VcpuExit(None, e)
        finally:
            with g.cond:
                if self.exit is None:
                    self.exit = VcpuExit(None)
                self._set_state(State.EXITED)

    def _set_state(self, state: State) -> None:
        self.state = state
        self.group.cond.notify_all()

    def kick(self) -> None:
        """Interrupt KVM_RUN on this thread (after the loop's pause flag is set)."""
        ident = self.thread.ident
        if ident is not None and self.thread.is_alive():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass  # the thread ended between the check and the kill


def exit_details(vcpu, reason) -> str:
    """A one-line description of a RunExit from the vCPU's kvm_run, for error messages."""
    from vmm._fast.runloop import RunExit
    from vmm.kvm.abi import EXIT_REASON_NAMES

    run = vcpu.run
    name = getattr(reason, "name", str(reason))
    if run is None:
        return name
    if reason == RunExit.INTERNAL_ERROR:
        n = min(run.internal.ndata, 16)
        data = " ".join(f"{run.internal.data[i]:#x}" for i in range(n))
        kind = {1: "emulation failure", 2: "exception during exception delivery",
                3: "event delivery failure", 4: "unexpected exit"}.get(run.internal.suberror, "?")
        return f"{name}: suberror {run.internal.suberror} ({kind}) data [{data}]"
    if reason == RunExit.FAIL_ENTRY:
        fe = run.fail_entry
        return f"{name}: hardware entry failure reason {fe.hardware_entry_failure_reason:#x} on cpu {fe.cpu}"
    if reason in (RunExit.UNHANDLED, RunExit.SYSTEM_EVENT):
        return (f"{name}: exit reason {EXIT_REASON_NAMES.get(run.exit_reason, run.exit_reason)}"
                f", system event type {run.system_event.type}")
    return name


def where_stopped(vcpu) -> str:
    """ " at rip=... rsp=... (cr0 cr2 cr3 cr4)" of a vCPU that has stopped, for an exit's
    detail (the first thing to read when a guest triple-faults); "" when KVM will not say."""
    try:
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    except Exception:  # a detail must never turn a clean end into a crash
        return ""
    return (f" at rip={regs.rip:#x} rsp={regs.rsp:#x} (cr0={sregs.cr0:#x} cr2={sregs.cr2:#x}"
            f" cr3={sregs.cr3:#x} cr4={sregs.cr4:#x})")


def _default_on_exit(thread: VcpuThread, reason) -> bool:
    return False


class Vcpus:
    """All vCPU threads of one VM."""

    def __init__(self, kvm, vm, vcpus, pio, mmio,
                 on_exit: Callable[[VcpuThread, object], bool] = _default_on_exit) -> None:
        from vmm._fast.runloop import install_kick_signal

        install_kick_signal(KICK_SIGNAL)
        self.kvm, self.vm, self.pio, self.mmio = kvm, vm, pio, mmio
        self.on_exit = on_exit
        self.cond = threading.Condition()
        self.want = State.RUNNING
        self.threads = [VcpuThread(self, v) for v in vcpus]

    def configure_all(self) -> None:
        supported = self.kvm.supported_cpuid()
        for t in self.threads:
            configure(self.kvm, t.vcpu, len(self.threads), supported)

    def start(self) -> None:
        for t in self.threads:
            if t.state is not State.CREATED:
                raise VcpuError(f"vCPU {t.index} was started already")
            t.thread.start()

    def _request(self, want: State) -> None:
        with self.cond:
            self.want = want
            if want is not State.RUNNING:
                for t in self.threads:
                    t.loop.request_pause()
            self.cond.notify_all()
        if want is not State.RUNNING:
            for t in self.threads:
                t.kick()

    def _wait_for(self, ok, timeout: float | None, what: str) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while not all(ok(t) for t in self.threads):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise VcpuError(f"vCPUs did not {what} within {timeout} s",
                                    "the host may be overloaded; retry")
                self.cond.wait(left)

    def pause(self, timeout: float | None = 5.0) -> None:
        """Park every vCPU thread outside KVM_RUN; their state is then safe to read."""
        self._request(State.PAUSED)
        self._wait_for(lambda t: t.state in (State.PAUSED, State.EXITED, State.CREATED),
                       timeout, "pause")

    def resume(self) -> None:
        self._request(State.RUNNING)

    def request_pause(self) -> None:
        """Ask every vCPU thread to park, without waiting (usable from a device handler);
        `pause()` waits for it."""
        self._request(State.PAUSED)

    def request_stop(self) -> None:
        """Ask every vCPU thread to end, without waiting (for device handlers, e.g. a
        guest-requested reset or poweroff port); `wait()` then returns."""
        self._request(State.EXITED)

    def stop(self, timeout: float | None = 5.0) -> None:
        """End every vCPU thread and join them (safe from on_exit on a vCPU thread)."""
        self._request(State.EXITED)
        me = threading.current_thread()
        for t in self.threads:
            if t.thread is not me and t.thread.ident is not None:
                t.thread.join(timeout)

    def wait(self, timeout: float | None = None) -> dict[int, VcpuExit]:
        """Block until every started vCPU thread has ended; {index: VcpuExit}."""
        self._wait_for(lambda t: t.state in (State.EXITED, State.CREATED), timeout, "exit")
        return {t.index: t.exit for t in self.threads}
