"""The jail, entered by the VMM on its only thread once everything it needs is open.

    steps = enter(limits, cell, channel_sock, hostname)   # {step: seconds, ..., "total": s}

Steps, each a reason for the next:
1. One thread only: namespaces, capabilities and the seccomp filter are per thread in
   Linux, so a thread started earlier would stay outside the jail. vCPU and device
   threads start after (service.attach), and inherit everything.
2. New mount, IPC, UTS, network and cgroup namespaces (the PID namespace was made by the
   supervisor: the VMM is pid 1 of its own). The network namespace is new and empty,
   not the VM's: the TAP fd opened before keeps working in any namespace, while the
   VM's namespace holds a routed link to the host bridge that the VMM has no use for.
   The empty one also gives it an empty abstract-socket namespace. The supervisor
   makes it meanwhile (`libc.new_netns`, the one costly namespace) and sends it with
   the seccomp filter; the VMM enters it (setns) and closes the fd, or makes its own.
3. The cell (vmm.jail.cell) becomes the root; the hostname is the machine's short id.
4. rlimits, capabilities, ids, no_new_privs (vmm.jail.privileges).
5. The seccomp filter (vmm.jail.seccomp), compiled by the supervisor while the VMM was
   starting (or here, before step 2) and loaded last; its listener goes to the
   supervisor over the channel and our copy is closed.
"""
from __future__ import annotations

import os
import socket
import time

from vmm.jail import channel, privileges, seccomp
from vmm.jail import libc as L
from vmm.jail.cell import Cell
from vmm.jail.config import Limits
from vmm.jail.errors import JailError

NAMESPACES = L.CLONE_NEWNS | L.CLONE_NEWIPC | L.CLONE_NEWUTS | L.CLONE_NEWNET | L.CLONE_NEWCGROUP


def _only_thread() -> None:
    tasks = os.listdir("/proc/self/task")
    if len(tasks) != 1:
        raise JailError(f"{len(tasks)} threads run before the jail; the VMM must jail itself alone",
                        "start threads after the jail (the machine factory must not start any)")


def _supervisor_alive(sock: socket.socket) -> None:
    """The parent-death signal was re-armed after the uid change; if the supervisor
    died before that, no signal will come: check the channel instead."""
    try:
        if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
            raise JailError("the supervisor went away while the VMM was jailing itself")
    except BlockingIOError:
        pass


class _Steps(dict):
    """Each step's duration (seconds), for the log line and benchmarks/jail."""

    def __init__(self) -> None:
        super().__init__()
        self.t0 = self.last = time.perf_counter()

    def run(self, name: str, what: str, fn, *args):
        try:
            result = fn(*args)
        except OSError as exc:
            raise JailError(f"jail: {what} failed: {exc.strerror or exc}") from None
        now = time.perf_counter()
        self[name] = self.get(name, 0.0) + now - self.last
        self.last = now
        return result


def enter(limits: Limits, cell: Cell, sock: socket.socket, hostname: str,
          program: bytes | None = None, netns: int = -1) -> dict[str, float]:
    """Jail the calling process for good; returns each step's duration and the total (s).
    `program` is the seccomp filter as BPF if the supervisor compiled it already, `netns`
    an fd of the new empty network namespace it made (closed here), or -1."""
    steps = _Steps()
    try:
        steps.run("check", "counting threads", _only_thread)
        cap_last = steps.run("check", "reading cap_last_cap", privileges.last_capability)
        if program is None:
            program = steps.run("compile", "compiling the seccomp filter", seccomp.process_program)
        if netns < 0:
            steps.run("unshare", "unshare (mount, IPC, UTS, network, cgroup namespaces)", L.unshare, NAMESPACES)
        else:
            steps.run("unshare", "unshare (mount, IPC, UTS, cgroup namespaces)", L.unshare,
                      NAMESPACES & ~L.CLONE_NEWNET)
            steps.run("unshare", "entering the new network namespace", L.setns, netns, L.CLONE_NEWNET)
    finally:
        if netns >= 0:
            os.close(netns)
    steps.run("cell", "building the cell", cell.build)
    steps.run("pivot", "pivot_root into the cell", cell.enter)
    steps.run("drop", "sethostname", socket.sethostname, hostname)
    os.umask(0o077)
    steps.run("drop", "setting rlimits", privileges.set_rlimits, limits)
    steps.run("drop", "dropping privileges", privileges.drop, limits, cap_last)
    _supervisor_alive(sock)
    listener = steps.run("seccomp", "loading the seccomp filter", seccomp.install, program)
    try:
        channel.send(sock, {"op": "listener"}, fd=listener)
    finally:
        os.close(listener)
    steps["total"] = time.perf_counter() - steps.t0
    return dict(steps)
