"""Starting a worker detached from the CLI and waiting until it is ready.

Double fork: the first child calls setsid() and forks the worker, then exits at once,
so the worker is re-parented to init, has no controlling terminal, and outlives the
CLI without ever becoming the CLI's zombie. The worker reports on a pipe when it is
ready (or why it failed); stdout/stderr go to the machine's worker.log.
"""
from __future__ import annotations

import json
import os
import select
import sys
import time

from vmm.errors import ExitStatus, MMError
from vmm.machines.layout import MachinePaths
from vmm.worker.spec import WorkerSpec

READY_TIMEOUT_S = 120.0


class WorkerStartError(MMError):
    """The worker could not start the VM."""

    exit_status = ExitStatus.RUN_FAILED


def start_worker(spec: WorkerSpec, paths: MachinePaths, timeout: float = READY_TIMEOUT_S) -> int:
    """Spawn the worker for `spec`; return its pid once the VM runs."""
    paths.create()
    spec.write(paths.spec)
    r, w = os.pipe2(os.O_CLOEXEC)
    argv = [sys.executable, "-m", "vmm.worker", str(paths.spec), str(w)]
    log_fd = os.open(paths.worker_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    pid = os.fork()
    if pid == 0:  # first child: only async-signal-safe work until exec
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.set_inheritable(w, True)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(w)
    os.close(log_fd)
    os.waitpid(pid, 0)
    try:
        reply = _read_ready(r, timeout)
    finally:
        os.close(r)
    if reply is None:
        raise WorkerStartError("the worker died while starting the VM",
                               f"see {paths.worker_log}")
    if not reply.get("ok"):
        raise WorkerStartError(str(reply.get("error")), reply.get("hint") or f"see {paths.worker_log}")
    return int(reply["pid"])


def _read_ready(fd: int, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise WorkerStartError(f"the worker did not report ready within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])
