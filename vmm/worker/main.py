"""The worker process: open everything, report ready, run the VM, record how it ended.

    python -m vmm.worker SPEC_PATH READY_FD

Order matters (issue 9 will jail the worker between "open" and "run"): the store
connection, console log, VM (/dev/kvm, memory, devices, taps) and API socket are all
opened before the first vCPU runs. READY_FD gets one JSON line, `{"ok": true, "pid": N}`
or `{"ok": false, "error": ..., "hint": ...}`, then is closed.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from vmm.errors import MMError
from vmm.machines import State
from vmm.machines.db import open_machines
from vmm.machines.layout import MachinePaths
from vmm.machines.liveness import self_identity
from vmm.worker.spec import WorkerSpec

# After the VM ends, give replies (wait/stop answers, console tails) at most this long to flush.
LINGER_S = 0.5


def _report(fd: int, message: dict) -> None:
    try:
        os.write(fd, json.dumps(message).encode() + b"\n")
        os.close(fd)
    except OSError:
        pass  # the CLI that started us is gone; the store has the outcome


def run_worker(spec_path: Path, ready_fd: int) -> int:
    from vmm.api.server import ApiServer
    from vmm.worker.loop import Loop
    from vmm.worker.service import WorkerService, log
    from vmm.worker.vm import load_factory

    spec = WorkerSpec.read(spec_path)
    paths = MachinePaths.for_id(spec.machine_id, Path(spec.state_dir))
    machines = open_machines(Path(spec.state_dir))
    machines.set_worker(spec.machine_id, spec.generation, *self_identity())
    loop = Loop()
    service = WorkerService(loop, spec, machines, paths.console_log)
    try:
        vm = load_factory(spec.factory)(spec.machine, service.console_sink, loop)
        server = ApiServer(loop, paths.api_socket, service)
        # -- everything is open: the jail (issue 9) goes here, before the first KVM_RUN --
        service.attach(vm)
    except BaseException as exc:
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log(f"start failed: {message}")
        machines.transition(spec.machine_id, State.EXITED, generation=spec.generation,
                            exit_code=125, exit_reason="error", error=message, finished_at=time.time())
        _report(ready_fd, {"ok": False, "error": message, "hint": getattr(exc, "hint", "")})
        if not isinstance(exc, MMError):
            raise
        return 1
    _report(ready_fd, {"ok": True, "pid": os.getpid()})
    # SIGTERM to the worker (host shutdown, an admin) is a graceful stop with the spec's
    # timeout, as `mm stop`; SIGINT (a stray Ctrl-C reaching it) is ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(lambda: service.begin_stop(spec.stop_timeout)))
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
        server.close()
        vm.close()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m vmm.worker SPEC_PATH READY_FD", file=sys.stderr)
        return 2
    return run_worker(Path(argv[0]), int(argv[1]))
