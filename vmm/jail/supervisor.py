"""The worker's unjailed half: it starts the VMM, writes the store for it, and tells how it ended.

A worker is two processes. The supervisor is what `launch` starts and what the store
records as the worker (pid + start time): it creates the machine's cgroup, makes a new
PID namespace and forks the VMM into it (into the cgroup too, on v2), makes the VMM's
empty network namespace while the VMM builds its VM, then does only what the jailed
VMM cannot:

- writes the VMM's state changes to the store (they arrive over vmm.jail.channel,
  checked as hostile input) and forwards its readiness to the launcher;
- holds the seccomp listener: a denied call stops the calling thread in the kernel and
  wakes the supervisor, which kills the VMM and records
  "killed by seccomp: <call> (syscall N)" (vmm.jail.seccomp says why it is done so);
- reaps the VMM and records an ending the VMM could not: seccomp (exit code 159, as
  for SIGSYS), an OOM kill inside the cgroup (reason "oom", 137), a crash ("error",
  128 + signal);
- forwards SIGTERM (a graceful stop) and removes the VMM's sockets and cgroup after it.

It never opens /dev/kvm, guest memory or a disk, and the VMM gets none of its fds (the
store is opened only after the fork; the child closes everything it inherited but its
channel). Killing the supervisor kills the VMM too (parent-death signal).
"""
from __future__ import annotations

import base64
import contextlib
import gc
import json
import os
import select
import selectors
import signal
import socket
import stat
import sys
import time
from pathlib import Path

# Only what comes before the fork is imported here; the rest (the store, the seccomp
# compiler) is imported after it, in parallel with the VMM's own imports and off the
# path to its first KVM_RUN (the cgroup code, needed before the fork, is preloaded by the
# fork server). After the fork this process is the parent of a PID
# namespace whose init is the VMM, and once that has died nothing here can fork, so no
# import after the fork may run a subprocess: vmm.jail.seccomp loads pyseccomp (to
# compile the filter on a cache miss, or to name a denied call) by soname, without the
# `ldconfig -p` of ctypes.util.find_library.
from vmm import prepared_ram
from vmm.fds import close_all_but
from vmm.jail import channel, libc
from vmm.jail.config import JailSpec, Limits
from vmm.jail.errors import JailError
from vmm.machines import InvalidTransition, State
from vmm.machines.layout import MachinePaths
from vmm.machines.states import LIVE
from vmm.timeline import mark

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Any, Callable

SECCOMP_EXIT_CODE = 128 + signal.SIGSYS
OOM_EXIT_CODE = 128 + signal.SIGKILL


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} supervisor[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class VmmContext:
    """What the VMM process is given: its channel, and what its jail is to be."""

    def __init__(self, sock: socket.socket, host_pid: int, paths: MachinePaths, state_dir: Path,
                 jail: JailSpec, limits: Limits | None, cgroup: tuple[list[str], str, bool] = ([], "", False)) -> None:
        self.sock = sock
        self.host_pid = host_pid  # the supervisor's pid: the worker's pid as the store and API know it
        self.paths, self.state_dir = paths, state_dir
        self.jail = jail
        self.limits = limits      # None without a jail
        self.joined = False
        # Our cgroup, made before the fork (Supervisor.placement): the `tasks` files we
        # join ourselves (v1), how we got in (for the "jailed in" line), and whether to
        # wait for the supervisor's "cgroup" message first (v2 when we were not born in it).
        self.cgroup_tasks, self.cgroup_how, self.cgroup_wait = cgroup
        self.program: bytes | None = None  # the seccomp filter, compiled by the supervisor meanwhile
        self.netns = -1  # the new empty network namespace it made for us (an fd), entered at the jail

    @property
    def cell_mountpoint(self) -> str:
        return str(self.state_dir / "cell")

    def wait_for_cgroup(self) -> None:
        """Be in the machine's cgroup (jailed only): call before allocating guest memory,
        so it is charged there. Born in it (v2), we are; on v1 we join it now; else we wait
        until the supervisor has attached us. Idempotent: the start-failure path calls it
        again, and a failed join is not retried."""
        if self.limits is not None and not self.joined:
            self.joined = True
            if self.cgroup_wait:
                self._expect("cgroup")
            join_cgroup(self.cgroup_tasks)

    def wait_for_program(self) -> bytes | None:
        """The seccomp filter, which the supervisor sends (it reads it while we make the VM)
        with the network namespace it made for us (`netns`). Call before the first store
        request (the message would be taken for its reply); the start-failure path calls
        it too. None without a jail."""
        self.wait_for_cgroup()
        if self.limits is not None and self.program is None:
            self.program = b""  # asked once: a failure here is not waited out again
            message, fds = self._expect("seccomp", fds=1)
            self.netns = fds[0] if fds else -1
            self.program = base64.b64decode(message["program"])
        return self.program

    def _expect(self, op: str, fds: int = 0) -> tuple[dict[str, Any], list[int]] | dict[str, Any]:
        """The supervisor's next message, which must be `op`; with `fds`, (message, its
        first `fds` fds), any others closed."""
        message, got = channel.recv(self.sock)
        for fd in got[fds:]:
            os.close(fd)
        if message.get("op") != op:
            for fd in got[:fds]:
                os.close(fd)
            raise RuntimeError(f"expected the supervisor's {op} message, got {message!r}")
        return (message, got[:fds]) if fds else message


def join_cgroup(tasks: list[str]) -> None:
    """Move the calling thread into each v1 hierarchy's machine cgroup by writing "0" to
    its `tasks` file (an empty list, on v2: we were born in it, or the supervisor attached
    us; MachineCgroup.place decides). Why the VMM
    moves itself: the kernel takes its global threadgroup lock for writing, which waits
    out an RCU grace period (5-15 ms on this host, each hierarchy), for every move but
    one, of the writer's own single thread, by "0". One thread is the whole VMM here
    (it starts threads only after the jail, which checks that again), and every thread
    it starts later is born in these cgroups."""
    if not tasks:
        return
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise JailError(f"{threads} threads run before the VMM joins its cgroup; only its own one would move",
                        "start threads after the jail (the machine factory must not start any)")
    from vmm.jail.cgroups import write_file  # imported before the fork whenever there are tasks

    for path in tasks:
        try:
            write_file(path, b"0")
        except OSError as exc:
            raise JailError(f"cannot join cgroup {os.path.dirname(path)}: {exc.strerror}",
                            "mm needs root to set resource limits") from None


class Supervisor:
    def __init__(self, spec, ready_fd: int) -> None:
        self.spec, self.ready_fd = spec, ready_fd
        self.state_dir = Path(spec.state_dir)
        self.paths = MachinePaths.for_id(spec.machine_id, self.state_dir)
        self.pid = os.getpid()
        self.machines = None
        self.cgroup: MachineCgroup | None = None
        self.born_inside = False  # the VMM was forked into its cgroup (v2: clone3)
        self.child = 0
        self.listener = -1
        self.violation = None
        self.ready_sent = False
        self.last_state = State.STARTING
        self.failure: str | None = None  # why the supervisor itself stopped the VMM
        self.failure_hint = ""
        self.sockets: list[Path] = [self.paths.api_socket]

    # -- starting ------------------------------------------------------------------------

    def run(self, vmm_main: Callable[[VmmContext], int]) -> int:
        try:
            jail = JailSpec.from_dict(getattr(self.spec, "jail", None))
            limits = jail.resolved(self.spec.machine, self.pid) if jail.enabled else None
            if limits is not None:
                self._prepare(limits)
                libc.unshare(libc.CLONE_NEWPID)  # our next child is pid 1 of a new PID namespace
            sup, vmm = channel.pair()
            # Everything imported so far goes to the GC's permanent generation: no later
            # collection in either process walks (and so copies on write) those pages.
            gc.freeze()
            self.child = self._fork()
        except BaseException as exc:
            if self.cgroup is not None:  # made before a fork that failed
                with contextlib.suppress(Exception):
                    self.cgroup.remove()
            self._open_store()
            self._fail_start(getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}",
                             getattr(exc, "hint", ""))
            return 1
        if self.child == 0:
            sup.close()
            self._vmm(VmmContext(vmm, self.pid, self.paths, self.state_dir, jail, limits, self.placement()),
                      vmm_main)
        vmm.close()
        prepared_ram.discard()  # the VMM's now: our copy would keep its pages after the VMM exits
        return self._supervise(sup, limits)

    def _prepare(self, limits: Limits) -> None:
        """Before the fork: the VMM's cgroup with its limits, its machine directory and the
        cell's mount point (~0.5 ms), so the VMM never waits for them: it joins the cgroup
        itself (v1) or is born in it (v2); vmm.jail.cgroups says why either is cheap."""
        from vmm.jail.cell import prepare_machine_dir
        from vmm.jail.cgroups import MachineCgroup

        self.cgroup = MachineCgroup.create(self.spec.machine_id, limits.cpus, limits.memory, limits.pids)
        prepare_machine_dir(self.paths.root, limits.gid)
        (self.state_dir / "cell").mkdir(mode=0o700, exist_ok=True)

    def _fork(self) -> int:
        """Fork the VMM: on cgroup v2 into its cgroup (clone3), where the kernel allows."""
        self.born_inside = False
        if self.cgroup is not None and self.cgroup.version == 2:
            pid, why = self.cgroup.fork_into()
            if pid is not None:
                self.born_inside = True
                return pid
            log(f"the VMM is attached to its cgroup after the fork: {why}")
        return os.fork()

    def placement(self) -> tuple[list[str], str, bool]:
        """For the VMM (VmmContext): the `tasks` files it joins, how it gets in, whether it
        waits for us to attach it (MachineCgroup.place decides; nothing moves here)."""
        if self.cgroup is None:
            return [], "", False
        if self.cgroup.version == 1:
            return self.cgroup.place(0), "joined (v1 tasks)", False
        if self.born_inside:
            return [], "born in it (clone3)", False
        return [], "attached (cgroup.procs)", True

    def _vmm(self, ctx: VmmContext, vmm_main: Callable[[VmmContext], int]) -> None:
        """In the forked child: shed the supervisor's fds, run the VMM."""
        code = 1
        try:
            libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            close_all_but([ctx.sock.fileno(), *prepared_ram.kept_fds()])  # the VMM takes the guest RAM
            code = vmm_main(ctx)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _open_store(self) -> None:
        from vmm.machines.db import open_machines

        if self.machines is None:
            self.machines = open_machines(self.state_dir)

    def _fail_start(self, message: str, hint: str = "") -> None:
        log(f"start failed: {message}")
        self._record(State.EXITED, exit_code=125, exit_reason="error", error=message, finished_at=time.time())
        self._report({"ok": False, "error": message, "hint": hint})

    # -- running -------------------------------------------------------------------------

    def _supervise(self, sup: socket.socket, limits: Limits | None) -> int:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: self._signal_child(signal.SIGTERM))
        pidfd = os.pidfd_open(self.child)
        self._start_up(sup, limits)
        gc.enable()  # off while starting (vmm.worker.launch.WORKER_ARGV)
        sel = selectors.DefaultSelector()
        sel.register(sup, selectors.EVENT_READ, "channel")
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        ended = False
        while not ended:
            for key, _ in sel.select():
                if key.data == "channel":
                    self._channel(sup, sel)
                elif key.data == "listener":
                    self._violation(sel)
                else:
                    ended = True
        self._drain(sup, sel)
        _, status = os.waitpid(self.child, 0)
        os.close(pidfd)
        mark("worker.vmm_reaped")
        self._finish(status)
        mark("worker.finished")
        return 0

    def _start_up(self, sup: socket.socket, limits: Limits | None) -> None:
        """Our part of the start, done while the VMM imports and builds its VM; on a
        failure the VMM is killed (and the failure recorded once it is reaped)."""
        from vmm.machines.liveness import self_identity

        try:
            if limits is not None:
                from vmm.jail import seccomp

                # The cgroup was made before the fork; a v2 VMM the kernel would not fork
                # into it is attached now (it waits for "cgroup" before guest RAM). Then
                # the seccomp filter (compiled, or read from the state directory's cache)
                # and the network namespace: the VMM makes its VM meanwhile and jails
                # itself with them.
                if self.placement()[2]:
                    self.cgroup.place(self.child)
                    channel.send(sup, {"op": "cgroup"})
                program = base64.b64encode(seccomp.process_program_cached(str(self.state_dir / "seccomp"))).decode()
                netns = libc.new_netns()  # for the VMM's jail (vmm.jail.enter, step 2)
                try:
                    channel.send(sup, {"op": "seccomp", "program": program}, fd=netns)
                finally:
                    os.close(netns)
            with behind_the_vmm():  # the VMM needs none of this before its first KVM_RUN
                self._open_store()
                self.machines.set_worker(self.spec.machine_id, self.spec.generation, *self_identity())
        except Exception as exc:
            self.failure = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self.failure_hint = getattr(exc, "hint", "") or ""
            log(f"cannot start the VMM: {self.failure}; stopping it")
            os.kill(self.child, signal.SIGKILL)

    def _signal_child(self, sig: int) -> None:
        try:
            os.kill(self.child, sig)
        except ProcessLookupError:
            pass

    def _drain(self, sup: socket.socket, sel: selectors.BaseSelector) -> None:
        """Messages and notifications already queued when the VMM ended."""
        sup.setblocking(False)
        while True:
            try:
                if not self._channel(sup, sel):
                    break
            except (BlockingIOError, OSError):
                break
        if self.listener >= 0:
            with contextlib.suppress(KeyError):
                sel.unregister(self.listener)
            while select_ready(self.listener) and self._violation(sel):
                pass
            os.close(self.listener)
            self.listener = -1

    def _channel(self, sup: socket.socket, sel: selectors.BaseSelector) -> bool:
        try:
            message, fds = channel.recv(sup)
        except channel.ChannelClosed:
            with contextlib.suppress(KeyError):
                sel.unregister(sup)
            return False
        op = message.get("op")
        if op == "listener" and fds and self.listener < 0:
            self.listener = fds.pop(0)
            sel.register(self.listener, selectors.EVENT_READ, "listener")
        for fd in fds:
            os.close(fd)
        if op == "transition":
            channel.send(sup, self._transition(message))
        elif op == "ready" and not self.ready_sent:
            if message.get("ok"):
                self._report({"ok": True, "pid": self.pid})
            else:
                self._report({"ok": False, "error": str(message.get("error"))[:channel.MAX_TEXT],
                              "hint": str(message.get("hint") or "")[:channel.MAX_TEXT]})
        elif op == "sockets":
            self._sockets(message.get("paths"))
        elif op not in ("listener", "ready"):
            log(f"ignoring a bad message from the VMM: {str(message)[:200]}")
        return True

    def _transition(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            target, fields = channel.check_transition(message)
        except ValueError as exc:
            log(f"refusing the VMM's store update: {exc}")
            return {"ok": False, "error": {"type": "Refused", "message": str(exc)}}
        try:
            self.machines.transition(self.spec.machine_id, target, generation=self.spec.generation, **fields)
        except InvalidTransition as exc:
            return {"ok": False, "error": {"type": "InvalidTransition", "message": exc.message,
                                           "name": self.spec.machine_id[:12], "current": exc.current,
                                           "wanted": exc.wanted}}
        except Exception as exc:
            return {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
        self.last_state = target
        return {"ok": True}

    def _sockets(self, paths: Any) -> None:
        if not isinstance(paths, list):
            return
        for p in paths[:16]:
            path = Path(str(p))
            if path.parent == self.paths.root and path not in self.sockets:
                self.sockets.append(path)

    def _violation(self, sel: selectors.BaseSelector) -> bool:
        """Read one denied call and kill the VMM; False once the listener has nothing
        more to say (every task of the filter gone: it polls as hung up)."""
        from vmm.jail import seccomp

        try:
            v = seccomp.receive(self.listener)
        except OSError:
            with contextlib.suppress(KeyError):
                sel.unregister(self.listener)
            return False
        if self.violation is None:
            self.violation = v
            log(f"the VMM was {v.text()}; args {', '.join(hex(a) for a in v.args)}; killing it")
        self._signal_child(signal.SIGKILL)
        return True

    # -- ending --------------------------------------------------------------------------

    def _finish(self, status: int) -> None:
        end = self._ending(status)
        if end is not None:
            reason, code, text = end
            log(f"VMM ended: {text}")
            if self.last_state in LIVE:
                self._record(State.EXITED, exit_code=code, exit_reason=reason, error=text, finished_at=time.time())
        if not self.ready_sent:
            self._report({"ok": False, "error": end[2] if end else "the VMM exited before the VM started",
                          "hint": self.failure_hint or f"see {self.paths.worker_log}"})
        self._cleanup()

    def _ending(self, status: int) -> tuple[str, int, str] | None:
        """(reason, exit code, text) of an end the VMM did not record itself, or None."""
        if self.violation is not None:
            return "seccomp", SECCOMP_EXIT_CODE, self.violation.text()
        if self.failure is not None:
            return "error", 125, self.failure
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and self.last_state not in LIVE:
            return None
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if self.cgroup is not None and sig == signal.SIGKILL and self.cgroup.oom_kills() > 0:
                return "oom", OOM_EXIT_CODE, self._oom_text()
            return "error", 128 + sig, f"the VMM process died of {signal.Signals(sig).name}"
        code = os.WEXITSTATUS(status)
        return "error", code or 1, f"the VMM process exited with status {code} before recording an end"

    def _oom_text(self) -> str:
        limit = (self.cgroup.limits().get("memory") or 0) >> 20
        guest = self.spec.machine.get("memory")
        if not isinstance(guest, int):
            covers = ""
        elif limit > guest >> 20:
            covers = f" (guest RAM {guest >> 20} MiB + the VMM's own {limit - (guest >> 20)} MiB)"
        else:
            covers = f", set below the guest's {guest >> 20} MiB of RAM (MM_JAIL_MEMORY)"
        return f"killed by the kernel's OOM killer: the VMM reached its memory limit of {limit} MiB{covers}"

    def _record(self, target: State, **fields: Any) -> None:
        try:
            self.machines.transition(self.spec.machine_id, target, generation=self.spec.generation, **fields)
            self.last_state = target
        except InvalidTransition as exc:
            log(f"store: {exc.message}")

    def _report(self, message: dict[str, Any]) -> None:
        self.ready_sent = True
        try:
            os.write(self.ready_fd, json.dumps(message).encode() + b"\n")
            os.close(self.ready_fd)
        except OSError:
            pass  # the CLI that started us is gone; the store has the outcome

    def _cleanup(self) -> None:
        for path in self.sockets:
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
            except FileNotFoundError:
                pass
        if self.cgroup is not None:
            try:
                self.cgroup.remove()
            except Exception as exc:
                log(f"cgroup: {exc}")
            from vmm.jail.cgroups import remove_stale

            remove_stale()


@contextlib.contextmanager
def behind_the_vmm():
    """Run the block at a lower priority than the VMM (nice +10): our start-up work and
    the VMM's way to its first KVM_RUN compete for a core on a busy host. The VMM needs
    the cgroup first, then the seccomp program and network namespace (at its jail), all
    made at our normal priority; the store's record of us (SQLite: the most of our work)
    only once the VM runs, so it gives way. Only as root: the priority must be taken
    back after, and lowering nice needs CAP_SYS_NICE."""
    if os.geteuid() != 0:
        yield
        return
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, min(nice + 10, 19))
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, nice)


def select_ready(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])
