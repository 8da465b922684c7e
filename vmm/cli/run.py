"""The `mm run` flow: create a machine, start its worker, attach, return the exit code.

`run_machine` gives Docker's semantics — attached runs stream the guest console (where
the workload's output goes) from before the VM started and return the workload's exit
code; Ctrl-C asks the guest to shut down and a second Ctrl-C kills it; `-d` prints the
id once the VM runs; `--rm` removes the machine after it ends — for any worker
configuration. The options are parsed and checked by `vmm.machines.options`.

The `mm run` command itself is not registered yet: building a Linux guest's worker
configuration from an image (kernel, guest init initramfs with the per-VM config, root
and writable disks, vsock, network) needs the guest package's host side, which has not
landed. The worker tests drive this flow with the tiny test guest.
"""
from __future__ import annotations

from typing import Any


def run_machine(control, opts, image_ref: str, worker: dict[str, Any], out_fd: int = 1, in_fd: int = 0) -> int:
    """Create and start a machine for `opts`; unless detached, attach and return its exit code."""
    import os

    rec = control.machines.create(image_ref, name=opts.name, labels=opts.labels, auto_remove=opts.auto_remove,
                                  config={"run": opts.to_dict(), "cmd": opts.cmd, "worker": worker})
    log = control.paths(rec).console_log
    offset = log.stat().st_size if log.exists() else 0
    try:
        rec = control.start(rec.id)
    except BaseException:
        if opts.auto_remove:
            control.remove(rec.id, force=True)
        raise
    if opts.detach:
        os.write(out_fd, rec.id.encode() + b"\n")
        return 0
    code = attach_and_wait(control, rec, offset, opts.interactive, in_fd, out_fd)
    if opts.auto_remove:
        control.remove(rec.id, force=True)
    return code


def attach_and_wait(control, rec, offset: int, interactive: bool, in_fd: int, out_fd: int) -> int:
    """Stream the console from `offset` until the VM ends; the exit code.

    Ctrl-C asks the guest to shut down, a second one kills the VM."""
    import os
    import select
    import signal

    from vmm.api.errors import ApiError

    try:
        sock = control.client(rec).console(offset)
    except ApiError:  # it ended before we attached: its output is all in the log
        with open(control.paths(rec).console_log, "rb") as f:
            f.seek(offset)
            os.write(out_fd, f.read())
        return control.wait(rec.id)
    interrupts = []

    def on_sigint(signum, frame):
        interrupts.append(signum)
        try:
            control.client(rec).kill("INT" if len(interrupts) == 1 else "KILL")
        except ApiError:
            pass  # it is ending already

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        watch = [sock] + ([in_fd] if interactive else [])
        while True:
            try:
                ready, _, _ = select.select(watch, [], [])
            except InterruptedError:
                continue
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(out_fd, data)
            if in_fd in ready:
                data = os.read(in_fd, 4096)
                if data:
                    sock.sendall(data)
                else:
                    watch.remove(in_fd)
    finally:
        signal.signal(signal.SIGINT, old)
        sock.close()
    return control.wait(rec.id)
