"""Starting a worker detached from the CLI and waiting until it is ready.

Double fork: the first child calls setsid() and forks the worker, then exits at once,
so the worker is re-parented to init, has no controlling terminal, and outlives the
CLI without ever becoming the CLI's zombie. The process started is the worker's
supervisor, which forks the jailed VMM (vmm.jail.supervisor); the pid reported and
recorded is the supervisor's. It reports on a pipe when the VM runs (or why it could
not: a start error, or the VMM killed by seccomp while starting); stdout/stderr of both
go to the machine's worker.log.

The worker is started by one of two paths, the same process in the end:
- the fork server (vmm.worker.forkserver): a pre-imported process of this uid, code tree
  and interpreter hands it to a spare child forked ahead of time (or forks it: one fork,
  setsid, the server reaps it), skipping the interpreter's start and the imports. The first run without a server starts the worker by exec and
  then a server, detached, for the runs after it;
- exec: the double fork + exec of `python -S -c ... vmm.worker.main` below, when the
  fork server is off (MM_FORKSERVER=0) or unusable; worker.log then says why, in one line.
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

# Only bounds a hung worker: one that dies closes the pipe and ends the wait at once. A
# hardware host reports in well under a second; the lab (TCG, its imports over 9p) took
# over 120 s while four labs shared this machine's two cores.
READY_TIMEOUT_S = 300.0


class WorkerStartError(MMError):
    """The worker could not start the VM."""

    exit_status = ExitStatus.RUN_FAILED


# `python -S -c`, not `python -m vmm.worker`: site (the venv's .pth files, distutils and
# apport hooks) costs ~4 ms and runpy ~2 ms of every start, and the worker needs
# neither: worker_env() puts the directories site would have added on PYTHONPATH. The
# cyclic GC is off while it starts (imports allocate a lot and make no garbage worth a
# collection); vmm.worker.main turns it back on in each process once the VM runs.
WORKER_ARGV = ("-S", "-c", "import gc; gc.disable(); import sys; from vmm.worker.main import main; "
                           "raise SystemExit(main(sys.argv[1:]))")


def worker_env() -> dict[str, str]:
    """This process's environment with PYTHONPATH set to what the worker imports from:
    the caller's PYTHONPATH, the tree `vmm` was imported from (an editable install's
    .pth entry), and this interpreter's site-packages directories."""
    import vmm

    ours = os.path.dirname(os.path.dirname(os.path.abspath(vmm.__file__)))
    dirs = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + [ours]
    for p in sys.path:
        if os.path.basename(p) in ("site-packages", "dist-packages") and p not in dirs:
            dirs.append(p)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dirs)}


def start_worker(spec: WorkerSpec, paths: MachinePaths, timeout: float = READY_TIMEOUT_S) -> int:
    """Spawn the worker for `spec`; return its pid once the VM runs."""
    paths.create()
    spec.write(paths.spec)
    env = worker_env()
    log_fd = os.open(paths.worker_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        r, server = _start(paths, env, log_fd)
    finally:
        os.close(log_fd)
    try:
        reply = _read_ready(r, timeout)
    finally:
        os.close(r)
        if server is not None:  # after the worker's start, so its imports do not compete with ours
            _start_server(server, env)
    if reply is None:
        raise WorkerStartError("the worker died while starting the VM",
                               f"see {paths.worker_log}")
    if not reply.get("ok"):
        raise WorkerStartError(str(reply.get("error")), reply.get("hint") or f"see {paths.worker_log}")
    return int(reply["pid"])


def _start(paths: MachinePaths, env: dict[str, str], log_fd: int):
    """Start the worker, through the fork server if it can; (the ready pipe's read end,
    the fork server to start afterwards or None)."""
    from vmm.worker import forkserver_client as fs

    r, w = os.pipe2(os.O_CLOEXEC)
    names = None
    if not fs.enabled():
        why = "the fork server is off (MM_FORKSERVER=0)"
    else:
        try:
            names = fs.names_for(env)
            pid = fs.launch(names, [str(paths.spec)], env, w, log_fd)
            os.close(w)
            _note(log_fd, f"forked by the fork server as pid {pid}")
            return r, None
        except fs.Unanswered as exc:
            os.close(w)
            os.close(r)
            _note(log_fd, exc.message)
            raise WorkerStartError(exc.message, exc.hint) from None
        except fs.Vanished as exc:
            os.close(w)
            if fs.has_writer(r, exc.pid):  # it forked the worker before it died: that one reports
                _note(log_fd, f"{exc.message} after forking the worker; waiting for its report")
                return r, None
            os.close(r)
            r, w = os.pipe2(os.O_CLOEXEC)
            why = exc.message
        except fs.ForkServerError as exc:
            why = exc.message
            if not isinstance(exc, (fs.NoServer, fs.Stale)):
                names = None  # one that refused for another reason is alive, or ours to fix
    _note(log_fd, f"{why}; starting the worker by exec" + ("" if names is None else ", and a fork server"))
    argv = [sys.executable, *WORKER_ARGV, str(paths.spec), str(fs.proto.READY_FD)]
    _detached_exec(argv, env, log_fd, w)
    os.close(w)
    return r, names


def _start_server(names, env: dict[str, str]) -> None:
    from vmm.worker import forkserver_client as fs

    _reap_spawned()
    log_fd = os.open(names.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # posix_spawn (vfork) rather than our double fork: it copies none of this
        # process's page tables, the one cost this adds to a run. sh puts the server in
        # the background and exits at once, so the server is not our child; it sheds
        # any other fd we let it inherit itself.
        argv = ["/bin/sh", "-c", '"$@" &', "sh", *fs.server_argv(names)]
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, log_fd, 1), (os.POSIX_SPAWN_DUP2, log_fd, 2)]
        _SPAWNED.append(os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True))
    finally:
        os.close(log_fd)


# The sh of each server start, reaped without waiting for it (that cost a run ~20 ms on
# a loaded host): a CLI exits long before it could matter; a process that starts many
# workers (a test suite) reaps the ones before at each server start.
_SPAWNED: list[int] = []


def _reap_spawned() -> None:
    for pid in list(_SPAWNED):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _SPAWNED.remove(pid)


def _note(log_fd: int, msg: str) -> None:
    os.write(log_fd, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} launch[{os.getpid()}]: {msg}\n".encode())


def _detached_exec(argv: list[str], env: dict[str, str], out_fd: int, pass_fd: int) -> None:
    """Exec `argv` in a grandchild of a new session: stdin /dev/null, stdout and stderr
    `out_fd`, `pass_fd` inherited as READY_FD, every other fd closed; returns once the
    intermediate child is reaped."""
    from vmm.worker.forkserver_proto import worker_fds

    pid = os.fork()
    if pid == 0:  # first child: only async-signal-safe work until exec
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            # Nothing else goes on, not even what our own caller let us inherit (a shell's
            # fds): the worker holds the same fds whether exec'd or forked by the server.
            os.set_inheritable(worker_fds(out_fd, pass_fd), True)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


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
