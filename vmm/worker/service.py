"""The worker's answers to the control API, and the record of how its VM ended.

Runs on the loop thread only. The VM's console output arrives from vCPU threads through
`console_sink` (appended to console.log at once, forwarded to attached consoles via the
loop); the VM's end arrives from a waiter thread through `call_soon_threadsafe`. State
changes are written to the store as they happen, each checked against this worker's
start generation. With an attach port in the spec, the workload's stdio is held by a
`Workload` (vmm/worker/workload.py) and its exit code is the VM's.
"""
from __future__ import annotations

import os
import resource
import socket
import sys
import threading
import time
from pathlib import Path

from vmm.api import protocol
from vmm.api.errors import BadArgument, Unavailable, WrongState
from vmm.api.server import DEFERRED, Connection
from vmm.machines import InvalidTransition, State
from vmm.timeline import mark
from vmm.worker.loop import Loop, Timer
from vmm.worker.spec import WorkerSpec
from vmm.worker.vm import ExitState, VirtualMachine
from vmm.worker.workload import ExitLineScanner, OutputLog, Workload

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Any, Callable

    from vmm.machines import Machines

GRACEFUL_SIGNALS = frozenset({"TERM", "INT", "HUP", "QUIT", "PWR"})
KILL_SIGNALS = frozenset({"KILL"})


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} worker[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class WorkerService:
    def __init__(self, loop: Loop, spec: WorkerSpec, machines: Machines, console_log: Path,
                 output_log: Path | None = None) -> None:
        self.loop, self.spec, self.machines = loop, spec, machines
        # The workload's output log is opened now too, before any jail.
        self.output = OutputLog(output_log or console_log.with_name("output.log")) \
            if spec.attach_port is not None else None
        self.workload: Workload | None = None
        self.exit_line = ExitLineScanner()  # init's MM-EXIT line, for a workload on the console
        # opened now, before any jail: appended to by the sink, read back for console replays
        flags = os.O_CREAT | os.O_CLOEXEC
        self.console_fd = os.open(console_log, os.O_WRONLY | os.O_APPEND | flags, 0o600)
        self._log_read_fd = os.open(console_log, os.O_RDONLY | os.O_CLOEXEC)
        self.machine: VirtualMachine | None = None
        self.state = State.STARTING
        self.exit: ExitState | None = None
        self.started = time.monotonic()
        self.console_bytes = 0
        # absolute offset in console.log of the next byte the guest writes (the log spans starts)
        self.log_pos = os.fstat(self.console_fd).st_size
        self._log_lock = threading.Lock()
        self._consoles: dict[Connection, int] = {}  # -> log offset sent up to
        self._waiters: list[tuple[Connection, int]] = []
        self._kill_timer: Timer | None = None
        self.on_exit: Callable[[], None] | None = None

    # -- from the VM ---------------------------------------------------------------------

    def console_sink(self, data: bytes) -> None:
        """Called from vCPU threads with guest console output."""
        with self._log_lock:
            os.write(self.console_fd, data)
            start = self.log_pos
            self.log_pos += len(data)
            self.console_bytes += len(data)
            self.exit_line.feed(data)
        if self._consoles:
            self.loop.call_soon_threadsafe(lambda: self._broadcast(start, data))

    def _broadcast(self, start: int, data: bytes) -> None:
        for conn, sent in list(self._consoles.items()):
            if start + len(data) > sent:  # skip what a replay from the log already sent
                conn.send_raw(data[max(0, sent - start):])
                if conn in self._consoles:  # send_raw drops a reader that fell too far behind
                    self._consoles[conn] = start + len(data)

    def attach(self, machine: VirtualMachine) -> None:
        """Start the VM and a thread that reports its end to the loop."""
        self.machine = machine
        if self.output is not None and machine.vsock_socket:
            port = self.spec.attach_port
            self.workload = Workload(self.loop, self.output,
                                     connect=lambda: self._vsock_connect(machine, port, timeout=2.0), log=log,
                                     stdin_open=self.spec.stdin_open)
        machine.start()
        self._record(State.RUNNING)
        if self.workload is not None:
            self.workload.start()
        threading.Thread(target=self._wait_thread, name="vm-wait", daemon=True).start()

    def _wait_thread(self) -> None:
        assert self.machine is not None
        try:
            state = self.machine.wait()
        except Exception as exc:  # the VM's own failure is still an ending to record
            state = ExitState("error", detail=f"{type(exc).__name__}: {exc}")
        self.loop.call_soon_threadsafe(lambda: self._ended(state or ExitState("error")))

    def _workload_code(self) -> int | None:
        """The workload's exit code as the guest reported it: the attach stream's EXIT
        frame, else init's MM-EXIT console line."""
        if self.workload is not None and self.workload.exit_code is not None:
            return self.workload.exit_code
        return self.exit_line.result[0] if self.exit_line.result else None

    def _ended(self, state: ExitState) -> None:
        code = self._workload_code()
        if state.exit_code is None and code is not None and state.reason in ("poweroff", "reboot"):
            state = state.replace(exit_code=code)
        self.exit = state
        if self._kill_timer:
            self._kill_timer.cancel()
        log(f"VM ended: {state.reason} code={state.effective_code()} {state.detail}".rstrip())
        self._record(
            State.EXITED, exit_code=state.effective_code(), exit_reason=state.reason,
            finished_at=time.time(), error=state.detail or None,
        )
        mark("vmm.ended")
        result = self._exit_result()
        for conn, rid in self._waiters:
            conn.reply(rid, result)
        self._waiters.clear()
        for conn in list(self._consoles):
            conn.close_after_flush()
        if self.workload is not None:
            self.workload.end_subscribers()
            self.workload.close()
        if self.on_exit:
            self.on_exit()

    def _record(self, target: State, **fields: Any) -> None:
        try:
            self.machines.transition(self.spec.machine_id, target, generation=self.spec.generation, **fields)
        except InvalidTransition as exc:
            log(f"store: {exc.message}")
        self.state = target

    def _exit_result(self) -> dict[str, Any]:
        assert self.exit is not None
        return {"exit_code": self.exit.effective_code(), "reason": self.exit.reason, "detail": self.exit.detail}

    # -- the API -------------------------------------------------------------------------

    def handle(self, req: protocol.Request, conn: Connection) -> Any:
        return getattr(self, "op_" + req.op)(req, conn)

    def op_hello(self, req, conn) -> dict[str, Any]:
        return {"versions": list(protocol.SUPPORTED_VERSIONS), "ops": sorted(protocol.OPS),
                "machine_id": self.spec.machine_id, "pid": os.getpid()}

    def op_status(self, req, conn) -> dict[str, Any]:
        out = {"state": self.state.value, "id": self.spec.machine_id, "pid": os.getpid(),
               "generation": self.spec.generation, "uptime_s": round(time.monotonic() - self.started, 3)}
        if self.exit:
            out.update(self._exit_result())
        return out

    def _need(self, *states: State) -> VirtualMachine:
        if self.state not in states or self.machine is None:
            raise WrongState(f"the machine is {self.state.value}",
                             "it must be " + " or ".join(s.value for s in states))
        return self.machine

    def op_pause(self, req, conn) -> dict[str, Any]:
        self._need(State.RUNNING).pause()
        self._record(State.PAUSED)
        return {"state": self.state.value}

    def op_resume(self, req, conn) -> dict[str, Any]:
        self._need(State.PAUSED).resume()
        self._record(State.RUNNING)
        return {"state": self.state.value}

    def op_stop(self, req, conn) -> Any:
        timeout = req.args.get("timeout", self.spec.stop_timeout)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0:
            raise BadArgument(f"stop timeout must be a number of seconds >= 0, not {timeout!r}")
        if self.exit is not None:
            return self._exit_result()
        if self.state != State.STOPPING:
            self._need(State.RUNNING, State.PAUSED)
            self.begin_stop(float(timeout))
        self._waiters.append((conn, req.id))
        return DEFERRED

    def begin_stop(self, timeout: float) -> None:
        """Ask the guest to shut down; kill the VM if it has not ended after `timeout` s."""
        machine = self.machine
        if self.exit is not None or self.state == State.STOPPING or machine is None:
            return
        if self.state == State.PAUSED:
            machine.resume()  # a paused guest cannot hear the shutdown request
        self._record(State.STOPPING)
        self._graceful(machine)
        self._kill_timer = self.loop.call_later(timeout, self._force)

    def _graceful(self, machine: VirtualMachine) -> None:
        """Ask the guest to power off: its agent when it has one, else the VM's own way."""
        if self.spec.agent_port is not None and machine.vsock_socket:
            threading.Thread(target=self._agent_shutdown, args=(machine,), daemon=True).start()
        else:
            machine.request_shutdown()

    def _agent_shutdown(self, machine: VirtualMachine) -> None:
        """On a helper thread: the guest agent stops the workload and powers off."""
        from vmm.guest.agent_client import AgentClient

        try:
            AgentClient(machine.vsock_socket, vsock_port=self.spec.agent_port, timeout=10.0).shutdown()
        except Exception as exc:  # the agent is not up (yet): the VM's own way, then the timeout
            log(f"agent shutdown failed ({exc}); asking the VM instead")
            self.loop.call_soon_threadsafe(machine.request_shutdown)

    def _force(self) -> None:
        if self.exit is None and self.machine is not None:
            log("stop timeout: killing the VM")
            self.machine.kill()

    def op_kill(self, req, conn) -> dict[str, Any]:
        sig = str(req.args.get("signal", "KILL")).upper().removeprefix("SIG")
        if sig.isdigit():
            sig = {"9": "KILL", "15": "TERM", "2": "INT", "1": "HUP", "3": "QUIT"}.get(sig, sig)
        if sig not in KILL_SIGNALS | GRACEFUL_SIGNALS:
            raise BadArgument(f"unsupported signal {req.args.get('signal')!r}",
                              "use KILL (power off now) or TERM/INT/HUP/QUIT (ask the guest to shut down)")
        machine = self._need(State.RUNNING, State.PAUSED, State.STOPPING)
        if sig in KILL_SIGNALS:
            machine.kill()
        else:
            if self.state == State.PAUSED:
                machine.resume()
                self._record(State.RUNNING)
            self._graceful(machine)
        return {"signal": sig}

    def op_wait(self, req, conn) -> Any:
        if self.exit is not None:
            return self._exit_result()
        self._waiters.append((conn, req.id))
        return DEFERRED

    def op_stats(self, req, conn) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, Any] = {
            "state": self.state.value,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "worker_rss_kib": _rss_kib(),
            "worker_cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
            "worker_threads": threading.active_count(),
            "console_bytes": self.console_bytes,
        }
        if self.machine is not None:
            out["vm"] = self.machine.stats()
        return out

    def op_console(self, req, conn) -> Any:
        offset = req.args.get("offset")
        if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool) or offset < 0):
            raise BadArgument(f"console offset must be an integer >= 0, not {offset!r}")
        machine = self._need(State.RUNNING, State.PAUSED, State.STOPPING)
        with self._log_lock:
            end = self.log_pos
            replay = b""
            if offset is not None and offset < end:
                replay = os.pread(self._log_read_fd, end - offset, offset)
        self._consoles[conn] = end
        conn.on_close = lambda: self._consoles.pop(conn, None)
        conn.upgrade(req.id, {"state": self.state.value, "offset": end - len(replay)}, machine.write_console)
        if replay:
            conn.send_raw(replay)
        return DEFERRED

    def op_attach(self, req, conn) -> Any:
        offset, stdin = req.args.get("offset"), req.args.get("stdin", False)
        if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool) or offset < 0):
            raise BadArgument(f"attach offset must be an integer >= 0, not {offset!r}")
        if not isinstance(stdin, bool):
            raise BadArgument(f"attach stdin must be true or false, not {stdin!r}")
        self._need(State.RUNNING, State.PAUSED, State.STOPPING)
        if self.workload is None:
            raise Unavailable("this machine's workload runs on its console, not an attach stream",
                              "use `mm console` or `mm logs`")
        self.workload.subscribe(conn, req.id, offset, stdin, {"state": self.state.value})
        return DEFERRED

    def op_exec(self, req, conn) -> Any:
        port = req.args["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 2**32:
            raise BadArgument(f"vsock port must be an integer in 1..2^32-1, not {port!r}")
        machine = self._need(State.RUNNING)
        if not machine.vsock_socket:
            raise Unavailable("this machine has no vsock device, so nothing can be exec'd in it")

        def bridge() -> None:
            try:
                stream = self._vsock_connect(machine, port)
            except Exception as exc:
                self.loop.call_soon_threadsafe(lambda: conn.reply_error(req.id, exc))
                return
            def hand_over() -> None:
                try:
                    conn.send_fd(req.id, {"port": port}, stream.fileno())
                finally:
                    stream.close()
            self.loop.call_soon_threadsafe(hand_over)

        threading.Thread(target=bridge, name="exec-bridge", daemon=True).start()
        return DEFERRED

    @staticmethod
    def _vsock_connect(machine: VirtualMachine, port: int, timeout: float = 10.0) -> socket.socket:
        """Firecracker's host-initiated vsock: connect, `CONNECT <port>\\n`, expect `OK ...`."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(str(machine.vsock_socket))
            sock.sendall(f"CONNECT {port}\n".encode())
            line = b""
            while not line.endswith(b"\n") and len(line) < 64:
                chunk = sock.recv(1)
                if not chunk:
                    break
                line += chunk
            if not line.startswith(b"OK "):
                raise Unavailable(f"the guest refused vsock port {port}",
                                  "its agent may not be running yet; try again in a moment")
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot reach the guest's vsock: {exc}") from None
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
