"""The worker fork server ("zygote"): one long-lived process that has imported what every
worker needs and forks workers on request, so a worker starts without an interpreter
start-up or its ~30 ms of imports (seconds in the lab).

    python -S -c "import gc; gc.disable(); from vmm.worker.forkserver import main; main()" DIR FP [ENTRY]

started detached by vmm.worker.forkserver_client (files and wire format:
vmm.worker.forkserver_proto). It stays single-threaded (it forks), takes the lock
FP.lock for life, imports PRELOAD, freezes the GC, records every file it imported
(path, mtime_ns, size) and serves FP.sock:

- only its own uid may ask (SO_PEERCRED);
- before each launch it re-checks those files: if any changed (or the interpreter),
  it answers "stale" and exits, and the client starts a fresh server, so a worker never
  runs code older than its tree;
- a launch hands the request to the spare, a child forked ahead of time that has
  rehearsed the worker's set-up (its copy-on-write faults taken), then prepares what
  the entry's `prepare_while_waiting` makes ahead (vmm.worker.main: the next VM's guest
  RAM, vmm.prepared_ram) until a request comes, and waits for one request (forking one
  at request time if there is none). The worker is then what
  the exec'd worker would have been (vmm.worker.launch): its own session (setsid), stdio
  /dev/null and worker.log, the caller's environment, cwd and umask, every other fd
  closed, then ENTRY(argv + [READY_FD]) in-process. One fork, not a double fork: the
  server ignores SIGCHLD, so the kernel reaps its workers (never a zombie of ours), and
  a worker outlives the server like any orphan (re-parented to init);
- the next spare is forked SPARE_DELAY_S after a launch, off the worker's path (its
  copy-on-write faults would otherwise compete with the worker's start); starts closer
  together than that fork at request time;
- it exits after IDLE_S without a request (MM_FORKSERVER_IDLE_S), on "stop", or stale.

MM_FORKSERVER_PRELOAD (comma-separated modules) adds to PRELOAD; it is part of the
server's name, so servers with other preloads do not answer for each other.
"""
from __future__ import annotations

import fcntl
import gc
import importlib
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path

from vmm import prepared_ram
from vmm.fds import close_all_but
from vmm.worker import forkserver_proto as proto

IDLE_S = 15 * 60
LOCK_WAIT_S = 5.0  # a stale predecessor is still exiting: it holds the lock that long at most
REQUEST_TIMEOUT_S = 5.0  # a client that connects and says nothing must not hold up the others
SPARE_DELAY_S = 0.2  # after a launch, before the next spare is forked (MM_FORKSERVER_SPARE_S; <0: none)

# What every worker imports: the supervisor, the VMM and its service, API, jail and
# seccomp, the production machine (x86 boot, the legacy and virtio devices and their
# transport: ~50 ms of imports per VM on this host, a third of a second in the lab,
# where the first disk's build was most of `vmm.built`). A module that fails to
# import here is logged and left to the worker, which imports it itself as it would
# after an exec (and meets the same error).
PRELOAD = (
    "vmm.worker.main", "vmm.worker.service", "vmm.worker.loop", "vmm.worker.vm", "vmm.worker.workload",
    "vmm.api.server", "vmm.jail.channel", "vmm.jail.cell", "vmm.jail.enter", "vmm.jail.seccomp",
    "vmm.jail.cgroups", "vmm.jail.policy", "vmm.jail.privileges", "vmm.machines.db", "vmm.machines.liveness",
    "vmm.kvm", "vmm.memory", "vmm.vcpus", "vmm.bus", "vmm._fast.runloop", "vmm.arch.x86.boot",
    "vmm.arch.x86.regs", "vmm.machine", "devices.virtio.config", "devices.virtio.mmio",
    "devices.virtio.block.device", "devices.virtio.net.device", "devices.virtio.net.tap",
    "devices.virtio.vsock.device", "devices.virtio.rng.device", "devices.virtio.balloon.device",
    "devices.legacy.i8042", "devices.legacy.power", "devices.legacy._serial", "faulthandler", "traceback",
)


def log(msg: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} forkserver[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class Imported:
    """The files behind every module imported so far (and the interpreter), as they were."""

    def __init__(self) -> None:
        paths = {os.path.realpath(sys.executable)}
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str):
                paths.add(path)
        self.files = [(p, *_identity(p)) for p in sorted(paths)]

    def stale(self) -> str | None:
        """The first recorded file that changed, moved or went away since; None if none."""
        for path, mtime, size in self.files:
            if _identity(path) != (mtime, size):
                return path
        return None


def _identity(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_mtime_ns, st.st_size


def preload(names: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import `names`; the ones that failed, with why."""
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed.append(f"{name} ({type(exc).__name__}: {exc})")
    return failed


def resolve(entry: str):
    module, _, func = entry.partition(":")
    return getattr(importlib.import_module(module), func)


class Spare:
    """A child forked ahead of time, waiting on its end of a socketpair for the one launch
    request it will run (SCM_RIGHTS brings the ready pipe and worker.log with it). It
    exits if the server closes its end (idle, stopped, stale, killed) before a request."""

    def __init__(self, target) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            _spare(theirs, target)
        theirs.close()
        self.pid, self.sock = pid, ours

    def hand(self, request: dict, fds: list[int]) -> bool:
        """Give it the request; False if it is gone (then it was not given anything)."""
        try:
            proto.send(self.sock, request, fds)
            return True
        except OSError:
            return False
        finally:
            self.close()

    def close(self) -> None:
        self.sock.close()


class Server:
    def __init__(self, listener: socket.socket, target, imported: Imported, idle_s: float = IDLE_S,
                 spare_delay_s: float = SPARE_DELAY_S) -> None:
        self.listener, self.target, self.imported, self.idle_s = listener, target, imported, idle_s
        self.spare_delay_s = spare_delay_s
        self.spare: Spare | None = None
        self.spare_due = 0.0  # when to fork the next spare (monotonic)
        self.launched = 0

    def serve(self) -> str:
        """Answer requests until idle, stopped or stale; why it ended."""
        deadline = time.monotonic() + self.idle_s
        try:
            while True:
                now = time.monotonic()
                left = deadline - now
                if left <= 0:
                    return "idle"
                if self.spare is None and self.spare_delay_s >= 0 and now >= self.spare_due:
                    self._fork_spare()
                    continue
                wait = left if self.spare is not None or self.spare_delay_s < 0 else min(left, self.spare_due - now)
                if not select.select([self.listener], [], [], wait)[0]:
                    continue
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                with conn:
                    ended = self._handle(conn)
                gc.collect()  # the request's garbage only: everything imported is frozen
                if ended:
                    return ended
                deadline = time.monotonic() + self.idle_s
        finally:
            if self.spare is not None:  # it sees the end of its socket and exits
                self.spare.close()
                self.spare = None

    def _fork_spare(self) -> None:
        try:
            self.spare = Spare(self.target)
        except OSError as exc:  # out of pids or memory: fork at request time instead
            log(f"cannot fork a spare worker: {exc.strerror}")
            self.spare_due = time.monotonic() + self.spare_delay_s + 1.0

    def refuse_backlog(self, why: str) -> None:
        """Connections already queued when we stop: told so, so none of them waits."""
        self.listener.setblocking(False)
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    proto.send(conn, {"ok": False, "exiting": True, "error": f"the fork server is exiting ({why})"})
                except OSError:
                    pass

    def _handle(self, conn: socket.socket) -> str | None:
        pid, uid, _ = proto.peer_cred(conn)
        conn.settimeout(REQUEST_TIMEOUT_S)
        try:  # read even a request we refuse: closing on it unread would reset our answer
            message, fds = proto.recv(conn)
        except (OSError, ValueError) as exc:
            log(f"bad request from pid {pid}: {exc}")
            _reply(conn, {"ok": False, "error": f"bad request: {exc}"})
            return None
        if uid != os.geteuid():
            for fd in fds:
                os.close(fd)
            log(f"refused pid {pid}: uid {uid} is not ours ({os.geteuid()})")
            _reply(conn, {"ok": False, "error": f"uid {uid} may not use the fork server of uid {os.geteuid()}"})
            return None
        if message is None:
            return None
        try:
            op = message.get("op")
            if op == "ping":
                _reply(conn, {"ok": True, "pid": os.getpid(), "files": len(self.imported.files),
                              "launched": self.launched, "spare": self.spare.pid if self.spare else None})
            elif op == "stop":
                _reply(conn, {"ok": True})
                return "stopped"
            elif op == "launch":
                return self._launch(conn, message, fds)
            else:
                _reply(conn, {"ok": False, "error": f"unknown op {op!r}"})
        finally:
            for fd in fds:
                os.close(fd)
        return None

    def _launch(self, conn: socket.socket, request: dict, fds: list[int]) -> str | None:
        changed = self.imported.stale()
        if changed is not None:
            log(f"stale: {changed} changed since start; exiting")
            _reply(conn, {"ok": False, "stale": changed, "error": f"{changed} changed since the fork server started"})
            return "stale"
        problem = _check_launch(request, fds)
        if problem:
            _reply(conn, {"ok": False, "error": f"bad launch request: {problem}"})
            return None
        spare, self.spare = self.spare, None
        self.spare_due = time.monotonic() + self.spare_delay_s
        if spare is not None and spare.hand(request, fds):
            pid = spare.pid
        else:
            try:
                pid = _fork_worker(self.target, request, fds[0], fds[1])
            except OSError as exc:
                _reply(conn, {"ok": False, "error": f"the fork server cannot fork: {exc.strerror}"})
                return None
        self.launched += 1
        _reply(conn, {"ok": True, "pid": pid})
        return None


def _reply(conn: socket.socket, message: dict) -> None:
    try:
        proto.send(conn, message)
    except OSError:
        pass  # the client went away; nothing was started for it, or the worker runs on


def _check_launch(request: dict, fds: list[int]) -> str:
    argv, env = request.get("argv"), request.get("env")
    if len(fds) != 2:
        return f"expected 2 fds (ready pipe, worker.log), got {len(fds)}"
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return "argv is not a list of strings"
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                                            and "\0" not in k + v for k, v in env.items()):
        return "env is not a map of names to strings"
    if not isinstance(request.get("cwd"), str) or not isinstance(request.get("umask"), int):
        return "cwd or umask missing"
    return ""


def _fork_worker(target, request: dict, ready_fd: int, log_fd: int) -> int:
    """Fork the worker for `request` now (no spare at hand); its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            _detach()
        except BaseException:
            os._exit(1)
        _worker(target, request, ready_fd, log_fd)  # never returns
    return pid


def _detach() -> None:
    """In a new child of the server: its own session, and the signal dispositions the
    exec'd worker starts with (the server ignores SIGCHLD; a worker must not)."""
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _spare(sock: socket.socket, target) -> None:
    """The spare's life: everything of the server's closed but its socket (the listener,
    the life lock: a spare holding it would keep the next server out), then one request;
    it exits without one when the server closes its end."""
    try:
        _detach()
        close_all_but([sock.fileno()])
        _rehearse(target)
        _prepare(target, sock)
        request, fds = proto.recv(sock)
    except BaseException:
        os._exit(1)
    if request is None or len(fds) != 2:
        os._exit(0)
    _worker(target, request, fds[0], fds[1])  # never returns


def _rehearse(target) -> None:
    """The worker's set-up (`_worker`) done once with our own values while the spare waits,
    and the entry module's own `rehearse()` (vmm.worker.main.rehearse) if it has one: the
    pages they touch (the environment, the import system's finders, the JSON codec...)
    are copied on write now, not on the worker's way to its first KVM_RUN (~1 ms here)."""
    env = dict(os.environ)
    proto.json.loads(proto.json.dumps({"op": "launch", "env": env}))
    os.environ.clear()
    os.environ.update(env)
    os.umask(os.umask(0o077))
    importlib.invalidate_caches()
    hook = getattr(sys.modules.get(getattr(target, "__module__", "") or ""), "rehearse", None)
    if callable(hook):
        try:
            hook()
        except Exception as exc:  # only a rehearsal: the worker meets the real thing itself
            log(f"spare: rehearse() failed: {type(exc).__name__}: {exc}")


def _prepare(target, sock: socket.socket) -> None:
    """The entry module's `prepare_while_waiting(interrupted)` (vmm.worker.main: the next
    VM's guest RAM), if it has one; `interrupted(timeout=0)` says whether a request waits on
    `sock`, waiting up to `timeout` seconds for one."""
    hook = getattr(sys.modules.get(getattr(target, "__module__", "") or ""), "prepare_while_waiting", None)
    if callable(hook):
        try:
            hook(lambda timeout=0.0: bool(select.select([sock], [], [], timeout)[0]))
        except Exception as exc:  # the worker does without
            log(f"spare: prepare_while_waiting() failed: {type(exc).__name__}: {exc}")


def _worker(target, request: dict, ready_fd: int, log_fd: int) -> None:
    """The worker, as the exec'd `python -S -c ... vmm.worker.main` would have been."""
    code = 1
    try:
        # Nothing of ours goes on: the listener, the lock (a worker holding it would keep
        # the next server out), the log, the request's socket.
        ready_fd = proto.worker_fds(log_fd, ready_fd, keep=prepared_ram.kept_fds())
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        try:
            os.chdir(request["cwd"])
        except OSError as exc:
            os.chdir("/")
            print(f"forkserver: cannot enter the launcher's directory {request['cwd']} ({exc.strerror}); "
                  f"the worker runs in /", file=sys.stderr, flush=True)
        importlib.invalidate_caches()  # files added since we started are importable
        argv = [*request["argv"], str(ready_fd)]
        sys.argv = ["-c", *argv]
        gc.disable()  # as in the exec'd worker: vmm.worker.main turns it on once the VM runs
        code = target(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def acquire_lock(path: Path, wait_s: float = LOCK_WAIT_S) -> int | None:
    """The server's life lock (fd), or None if another live server holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)  # whose it is: stop_all() can stop a server still starting
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def bind(path: Path) -> socket.socket:
    """The listening socket at `path` (mode 0600); call with the lock held, so a socket
    file already there is a dead server's."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    listener.listen(64)
    return listener


def single_threaded() -> bool:
    return len(os.listdir("/proc/self/task")) == 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = proto.Names(Path(args[0]), args[1])
    entry = args[2] if len(args) > 2 else proto.ENTRY
    idle_s = float(os.environ.get("MM_FORKSERVER_IDLE_S") or IDLE_S)
    os.chdir("/")  # hold no launcher's directory busy
    close_all_but()  # nor any fd it let us inherit (a shell's pipe would never see EOF)
    lock = acquire_lock(names.lock)
    if lock is None:
        log("another fork server holds the lock; exiting")
        return 0
    t0 = time.monotonic()
    # We start while the first worker's guest boots (seconds of imports in the lab):
    # give way to it, but only where we can take the priority back (root), since our
    # children inherit it.
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, min(nice + 10, 19))
    target = resolve(entry)
    failed = preload(PRELOAD + tuple(proto.extra_preload(os.environ)))
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    if failed:
        log(f"not preloaded (the worker imports them itself): {'; '.join(failed)}")
    if not single_threaded():
        log("a preloaded module started a thread: a forking server must be single-threaded; exiting")
        return 1
    if "vmm.jail.cell" in sys.modules:  # once here, not in every jailed worker (vmm.jail.cell._memo)
        sys.modules["vmm.jail.cell"].code_roots()
    warm = getattr(sys.modules.get(entry.partition(":")[0]), "prewarm", None)
    if callable(warm):  # the entry's own once-per-server work (vmm.worker.main.prewarm)
        try:
            warm()
        except Exception as exc:
            log(f"prewarm failed (the worker does it itself): {type(exc).__name__}: {exc}")
    imported = Imported()
    gc.freeze()  # the children share these pages: no collection should touch (and copy) them
    listener = bind(names.sock)
    log(f"serving {names.sock} for {entry}: {len(sys.modules)} modules, {len(imported.files)} files, "
        f"ready in {(time.monotonic() - t0) * 1000:.0f} ms")
    # Our children are workers and spares: the kernel reaps them (no zombie, no wait).
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    spare_s = float(os.environ.get("MM_FORKSERVER_SPARE_S") or SPARE_DELAY_S)
    server = Server(listener, target, imported, idle_s, spare_s)
    why = "error"
    try:
        why = server.serve()
    finally:
        try:
            names.sock.unlink()  # before the lock goes: a successor never meets our socket
        except FileNotFoundError:
            pass
        server.refuse_backlog(why)
        listener.close()
        log(f"exiting: {why} after {server.launched} launches")
    return 0
