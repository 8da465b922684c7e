"""Reaching a machine's guest agent through its worker: the one place that turns a
machine reference into an `AgentClient`, shared by `mm exec`, `mm cp`, `mm top` and
whatever drives mm next (an MCP server, compose).

    rec, agent = guest_agent(control, "vm1")   # checks the state; waits for a booting agent
    agent.exec(["uname", "-a"])                 # vmm.guest.agent_client.AgentClient
    result = run(control, "vm1", ["id"], user="nobody")
    titles, rows = processes(control, "vm1")    # `mm top`

Every agent connection dials the guest's vsock port through the VM's vsock host socket
(see VsockConnector), so no byte of an exec passes through the worker's Python. A machine
that is not running is refused before anything is sent, so a bad request changes nothing.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from vmm.errors import Conflict, MMError
from vmm.guest.errors import AgentError
from vmm.machines.records import MachineRecord
from vmm.machines.states import State

# A guest that was just started needs a moment (on hardware) to minutes (in the lab, under
# load) before its agent listens: an exec that early waits until this long after the
# machine's start instead of failing. Any connection still retries for a while: init
# restarts a killed agent within about a second, and the vsock device gives up on a
# connection the guest has not answered within 2 s (a loaded guest, many concurrent execs).
AGENT_BOOT_WAIT_S = 180.0
AGENT_MIN_WAIT_S = 20.0
# One dial: connect, `CONNECT <port>`, wait for `OK` (a booting guest may not answer).
_DIAL_TIMEOUT_S = 5.0
_RETRY_PAUSE_S = 0.25


class NotRunning(Conflict):
    """The machine is not in the running state, so nothing can run in it."""


class NoAgent(Conflict):
    """The machine was not built with a guest agent (no vsock device or agent port)."""

    hint = "machines started by `mm run` have one; this one was created some other way"


class AgentUnavailable(AgentError):
    """The machine runs but its guest agent does not answer."""


class GuestCommandFailed(MMError):
    """A helper command mm ran in the guest (e.g. `ps` for `mm top`) failed."""


def running(control, ref: str) -> MachineRecord:
    """The record of `ref` if it is running; NotRunning with a hint for every other state."""
    rec = control.find(ref)
    if rec.state is State.RUNNING:
        return rec
    name, state = rec.name, rec.state
    if state is State.PAUSED:
        raise NotRunning(f"machine {name} is paused", f"`mm unpause {name}` first")
    if state is State.STARTING:
        raise NotRunning(f"machine {name} is still starting", "try again in a moment")
    if state is State.STOPPING:
        raise NotRunning(f"machine {name} is stopping", f"`mm start {name}` once it has stopped")
    detail = f" (the worker died: {rec.error})" if state is State.DEAD and rec.error else ""
    raise NotRunning(f"machine {name} is not running: it is {state.value}{detail}",
                     f"`mm start {name}` starts it")


def agent_endpoint(rec: MachineRecord) -> tuple[str, int]:
    """(the VM's vsock host socket, the agent's port) from the worker configuration."""
    worker = rec.config.get("worker") or {}
    port = worker.get("agent_port")
    vsock = (worker.get("machine") or {}).get("vsock") or ""
    _, sep, uds = vsock.partition(":")
    if not isinstance(port, int) or not sep or not uds:
        raise NoAgent(f"machine {rec.name} has no guest agent to run commands through")
    return uds, port


class VsockConnector:
    """The `AgentClient` connector for one machine: each call dials the agent's port
    through the VM's vsock host socket (Firecracker's model: `CONNECT <port>` ->
    `OK <n>`), which the worker's vsock device serves. Host tools reach that socket at
    its path (the jail keeps it there); the worker's `exec` API op hands out the same
    stream to clients that cannot open it, at the cost of one more hop.

    While the guest boots its vsock driver or agent is not up yet: the first connection
    keeps trying until AGENT_BOOT_WAIT_S after the machine started (at least
    AGENT_MIN_WAIT_S), or for `wait` seconds when given; later ones (the agent answered
    once) for AGENT_MIN_WAIT_S. If the machine leaves `running` meanwhile, that is the
    error."""

    def __init__(self, control, rec: MachineRecord, wait: float | None = None) -> None:
        self.control, self.rec = control, rec
        if wait is None:
            since_start = time.time() - (rec.started_at or time.time())
            wait = max(AGENT_MIN_WAIT_S, AGENT_BOOT_WAIT_S - since_start)
        self.wait = wait
        self.uds, self.port = agent_endpoint(rec)
        self.answered = False

    def __call__(self):
        from vmm.guest.agent_client import vsock_connect

        deadline = time.monotonic() + (min(self.wait, AGENT_MIN_WAIT_S) if self.answered else self.wait)
        while True:
            try:
                sock = vsock_connect(self.uds, self.port, timeout=_DIAL_TIMEOUT_S)
            except AgentError as exc:
                running(self.control, self.rec.id)  # raises NotRunning once it ended or paused
                if time.monotonic() >= deadline:
                    raise self._unavailable(exc) from None
                time.sleep(_RETRY_PAUSE_S)
                continue
            self.answered = True
            return sock

    def _unavailable(self, exc: MMError) -> AgentUnavailable:
        name = self.rec.name
        waited = min(self.wait, AGENT_MIN_WAIT_S) if self.answered else self.wait
        return AgentUnavailable(f"the guest agent of {name} does not answer within {waited:.0f} s: {exc.message}",
                                f"the guest may still be booting or its agent died; `mm logs {name}` shows its console")


def guest_agent(control, ref: str, wait: float | None = None):
    """(record, AgentClient) for a running machine."""
    from vmm.guest.agent_client import AgentClient

    rec = running(control, ref)
    return rec, AgentClient(VsockConnector(control, rec, wait))


def run(control, ref: str, argv: list[str], *, env: Mapping[str, str] | Iterable[str] | None = None,
        user: str | None = None, workdir: str | None = None, stdin: bytes | None = None):
    """Runs argv in the guest to completion; an ExecResult (exit code, stdout, stderr)."""
    _, agent = guest_agent(control, ref)
    return agent.exec(argv, env=env, user=user, cwd=workdir, stdin=stdin)


def processes(control, ref: str, ps_args: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The guest's processes as `ps` prints them (Docker's `top`: default `ps -ef`):
    the column titles and one row per process, without the `ps` itself."""
    _, agent = guest_agent(control, ref)
    argv = ["ps", *(ps_args if ps_args else ["-ef"])]
    with agent.start(argv, stdin_eof=True) as ex:
        out, err = bytearray(), bytearray()
        for kind, data in ex.output():
            (out if kind == "stdout" else err).extend(data)
        code, ps_pid = ex.exit_code, ex.pid
    if code == 127:
        raise GuestCommandFailed("the guest has no `ps` command",
                                 "`mm top` runs the image's ps (busybox or procps); "
                                 "`mm exec NAME ls /proc` works without it")
    if code != 0:
        raise GuestCommandFailed(f"`{' '.join(argv)}` failed in the guest (exit {code}): "
                                 f"{err.decode(errors='replace').strip()}",
                                 "give ps options the guest's ps understands")
    return parse_ps(out.decode(errors="replace"), exclude_pid=ps_pid)


def parse_ps(text: str, exclude_pid: int | None = None) -> tuple[list[str], list[list[str]]]:
    """Splits ps output like Docker's top does: titles from the first line, each row into
    as many fields, the last (the command) keeping its spaces."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise GuestCommandFailed("ps printed nothing in the guest")
    titles = lines[0].split()
    pid_col = titles.index("PID") if "PID" in titles else None
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        if pid_col is not None and exclude_pid is not None and len(fields) > pid_col \
                and fields[pid_col] == str(exclude_pid):
            continue
        rows.append(fields)
    return titles, rows


def as_json(titles: list[str], rows: list[list[str]]) -> dict[str, Any]:
    """Docker's top API shape."""
    return {"Titles": titles, "Processes": rows}
