"""The worker process: a supervisor, and the VMM it forks, which opens everything, jails
itself, runs the VM and records how it ended.

    python -m vmm.worker SPEC_PATH READY_FD

The process started here is the supervisor (vmm.jail.supervisor): the store knows it as
the worker, it writes the store for the VMM and reports on READY_FD one JSON line,
`{"ok": true, "pid": N}` or `{"ok": false, "error": ..., "hint": ...}`. `run_vmm` is the
VMM, in the forked child. Order matters there: the console log, the VM (/dev/kvm, guest
memory, devices, taps) and the API socket are all opened first, then the VMM jails
itself (vmm.jail.enter: namespaces, the cell, dropped privileges, seccomp), and only
then does `service.attach` start the vCPU threads and with them the first KVM_RUN.
With `mm run --no-jail` (spec `jail.enabled` false) the same two processes run with no
jail at all, and a warning says so.
"""
from __future__ import annotations

import errno
import gc
import signal
import sys
import time
from pathlib import Path

from vmm import timeline
from vmm.errors import MMError
from vmm.jail.supervisor import Supervisor, VmmContext
from vmm.machines import InvalidTransition, State
from vmm.worker.spec import WorkerSpec

# After the VM ends, give replies (wait/stop answers, console tails) at most this long to flush.
LINGER_S = 0.5
# The fork server's spare prepares the next VM's guest RAM this long after it was forked.
PREPARE_DELAY_S = 2.0


def prewarm() -> None:
    """What every worker would do first, done once in the fork server (vmm.worker.forkserver
    calls this after its preload), so a forked worker inherits it: ~0.3 ms of class
    creation in the VMM (in a freshly forked process mostly copy-on-write faults), and
    the seccomp program's cache key in the supervisor."""
    from vmm.jail import seccomp

    _service_class()
    _server_class()
    seccomp.cache_key()


def rehearse() -> None:
    """The worker's first steps on a made-up spec, with no side effect: run by the fork
    server's spare while it waits (vmm.worker.forkserver), so their copy-on-write faults
    come before a request, not on the way to the VM's first KVM_RUN."""
    import json

    from vmm.jail.config import JailSpec
    from vmm.worker.spec import SPEC_VERSION

    data = {"machine_id": "0" * 32, "generation": 1, "state_dir": "/nonexistent", "factory": "none:none",
            "machine": {}, "v": SPEC_VERSION}
    spec = WorkerSpec(**json.loads(json.dumps(data)))
    Supervisor(spec, -1)
    JailSpec.from_dict(spec.jail).resolved(spec.machine, 1)


def prepare_while_waiting(interrupted) -> None:
    """Run by the fork server's spare after rehearse(), until `interrupted()` says a request
    waits: the next VM's guest RAM with its first MM_PREFAULT_MIB faulted in
    (vmm.prepared_ram), which its kernel load then writes without allocating.

    It starts PREPARE_DELAY_S (MM_PREFAULT_DELAY_S) after the spare, which is forked just
    after a launch: not while that VM boots, whose start it would slow (the lab's two CPUs
    share two host cores with its I/O thread), and at a lower priority than any VM."""
    import os

    from vmm import prepared_ram
    from vmm.jail.supervisor import behind_the_vmm
    from vmm.memory import thp_available

    window = prepared_ram.window_from_env()
    try:
        delay = float(os.environ.get("MM_PREFAULT_DELAY_S") or PREPARE_DELAY_S)
    except ValueError:
        delay = PREPARE_DELAY_S
    if window and not interrupted(max(0.0, delay)):
        with behind_the_vmm():
            prepared_ram.prepare(window, window, thp_available(), interrupted)


def _memo(fn):
    """fn() once per process (and, through prewarm, once per fork server)."""
    cache: list = []

    def once():
        if not cache:
            cache.append(fn())
        return cache[0]

    return once


@_memo
def _service_class():
    from vmm.worker.service import WorkerService

    class Service(WorkerService):
        """The API reports the worker's pid as the store and `mm inspect` know it: the
        supervisor's. In its own PID namespace the VMM itself is pid 1."""

        host_pid = 0

        def op_hello(self, req, conn):
            return {**super().op_hello(req, conn), "pid": self.host_pid}

        def op_status(self, req, conn):
            return {**super().op_status(req, conn), "pid": self.host_pid}

    return Service


@_memo
def _server_class():
    from vmm.api.server import ApiServer

    class CellApiServer(ApiServer):
        """In the cell the machine directory is read-only, so removing api.sock fails
        (EROFS); the supervisor removes it once the VMM has exited."""

        def close(self) -> None:
            try:
                super().close()
            except PermissionError:
                pass
            except OSError as exc:
                if exc.errno != errno.EROFS:
                    raise

    return CellApiServer


def _jail(ctx: VmmContext, vm, log) -> None:
    """Everything is open: jail the VMM before the first KVM_RUN (or say loudly why not)."""
    from vmm.jail import channel
    from vmm.jail.config import NO_JAIL_WARNING

    sockets = [str(ctx.paths.api_socket)] + ([str(vm.vsock_socket)] if getattr(vm, "vsock_socket", None) else [])
    channel.send(ctx.sock, {"op": "sockets", "paths": sockets})
    if ctx.limits is None:
        log(f"warning: {NO_JAIL_WARNING}")
        return
    from vmm.jail.cell import Cell, share_socket
    from vmm.jail.enter import enter

    limits = ctx.limits
    for path in sockets[1:]:  # the VMM's own vsock socket: it connects to it after the jail
        share_socket(path, limits.gid)
    cell = Cell(ctx.cell_mountpoint, str(ctx.paths.root), limits.ro_paths)
    program = ctx.wait_for_program()
    steps = enter(limits, cell, ctx.sock, ctx.paths.root.name, program, ctx.netns)
    ctx.netns = -1  # closed by enter
    parts = ", ".join(f"{k} {v * 1000:.1f}" for k, v in steps.items() if k != "total")
    cpus = "none" if limits.cpus is None else f"{limits.cpus:g}"  # None: no CPU-time limit (vmm.jail.config)
    log(f"jailed in {steps['total'] * 1000:.1f} ms ({parts}): uid/gid {limits.uid}/{limits.gid}, cpus {cpus}, "
        f"memory {'none' if limits.memory is None else f'{limits.memory >> 20} MiB'}, pids {limits.pids}, "
        f"cgroup {ctx.cgroup_how or '?'}")


def run_vmm(ctx: VmmContext, spec: WorkerSpec) -> int:
    import faulthandler

    faulthandler.enable()  # a crash in C code (a device, ctypes) leaves its Python stacks in worker.log
    from vmm.jail import channel
    from vmm.worker.loop import Loop
    from vmm.worker.service import log
    from vmm.worker.vm import load_factory

    timeline.open_early()  # before the jail hides the file
    timeline.mark("vmm.start")
    loop = Loop()
    service = _service_class()(loop, spec, channel.StoreProxy(ctx.sock), ctx.paths.console_log)
    service.host_pid = ctx.host_pid
    try:
        from vmm.worker import affinity

        affinity.apply(spec.cpuset)  # first: every thread started from here on inherits it
        factory = load_factory(spec.factory)
        # Every VM needs the KVM layer and the run loop: imported now, while the
        # supervisor makes the cgroup, not after.
        import vmm._fast.runloop, vmm.bus, vmm.kvm, vmm.memory, vmm.vcpus  # noqa: E401, F401
        if ctx.limits is not None:
            # The cell's code roots, worked out while the supervisor makes the cgroup:
            # building the cell later only looks at modules imported after this.
            from vmm.jail.cell import code_roots

            code_roots()
        ctx.wait_for_cgroup()  # guest RAM is charged to the cgroup of the first toucher
        vm = factory(spec.machine, service.console_sink, loop)
        timeline.mark("vmm.built")
        server = _server_class()(loop, ctx.paths.api_socket, service)
        # SIGTERM to the worker (host shutdown, an admin) reaches us from the supervisor: a
        # graceful stop with the spec's timeout, as `mm stop`; SIGINT is ignored.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(
            lambda: service.begin_stop(spec.stop_timeout)))
        _jail(ctx, vm, log)
        timeline.mark("vmm.jailed")
        service.attach(vm)
        timeline.mark("vmm.running")
    except BaseException as exc:
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log(f"start failed: {message}")
        ctx.wait_for_program()
        try:
            service.machines.transition(spec.machine_id, State.EXITED, generation=spec.generation, exit_code=125,
                                        exit_reason="error", error=message, finished_at=time.time())
        except InvalidTransition as err:
            log(f"store: {err.message}")
        channel.send(ctx.sock, {"op": "ready", "ok": False, "error": message, "hint": getattr(exc, "hint", "")})
        if not isinstance(exc, MMError):
            raise
        return 1
    channel.send(ctx.sock, {"op": "ready", "ok": True})
    gc.enable()  # off while starting (vmm.worker.launch.WORKER_ARGV)
    _serve(loop, server, service, vm, log)
    return 0


def _serve(loop, server, service, vm, log) -> None:
    def linger(deadline: float) -> None:
        if not server.connections or time.monotonic() > deadline:
            loop.stop()
        else:
            loop.call_later(0.01, lambda: linger(deadline))

    def on_exit() -> None:
        server.close()  # no new clients: the store has the outcome now
        linger(time.monotonic() + LINGER_S)

    service.on_exit = on_exit
    try:
        loop.run()
    finally:
        timeline.mark("vmm.loop_ended")
        server.close()
        try:
            vm.close()
        except OSError as exc:
            if exc.errno != errno.EROFS:  # a device removing its socket from the read-only
                log(f"closing the VM: {exc}")  # cell: the supervisor removes it instead
        timeline.mark("vmm.closed")


def run_worker(spec_path: Path, ready_fd: int) -> int:
    timeline.mark("worker.start")
    spec = WorkerSpec.read(spec_path)
    return Supervisor(spec, ready_fd).run(lambda ctx: run_vmm(ctx, spec))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m vmm.worker SPEC_PATH READY_FD", file=sys.stderr)
        return 2
    return run_worker(Path(argv[0]), int(argv[1]))
