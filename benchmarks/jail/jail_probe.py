"""One jail set-up in a process shaped like a worker: `python jail_probe.py STATE PRECOMPILED`.

Imports what a worker's VMM has loaded when it jails itself (the worker, the machine and
the devices), then does what the supervisor and the VMM do: a new PID namespace, a fork,
and `vmm.jail.enter` in the child, with the seccomp filter compiled beforehand by the
"supervisor" (PRECOMPILED=1, as in a worker) or by the child itself (0). Prints the
child's per-step durations (seconds) as one JSON object.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import devices.virtio.block.device  # noqa: F401  (what a real VMM has imported by then)
import devices.virtio.vsock.device  # noqa: F401
import vmm.machine  # noqa: F401
import vmm.worker.main  # noqa: F401
from vmm.jail import channel, libc
from vmm.jail.cell import Cell
from vmm.jail.config import JailSpec
from vmm.jail.enter import enter
from vmm.jail.seccomp import process_program

MiB = 1 << 20


def main(state: Path, precompiled: bool) -> None:
    program = process_program() if precompiled else None  # what the supervisor hands over
    sup, vmm = channel.pair()
    libc.unshare(libc.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        try:
            limits = JailSpec().resolved({"cpus": 1, "memory": 256 * MiB}, os.getppid() or 1)
            cell = Cell(str(state / "cell"), str(state / "machines" / "bench"), limits.ro_paths)
            channel.send(vmm, {"steps": enter(limits, cell, vmm, "bench", program)})
        finally:
            os._exit(0)
    message = {}
    while "steps" not in message:
        message, fds = channel.recv(sup)
        for fd in fds:
            os.close(fd)
    os.waitpid(pid, 0)
    print(json.dumps(message["steps"]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] == "1")
