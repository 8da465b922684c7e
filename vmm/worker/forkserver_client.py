"""The launcher's side of the worker fork server (vmm.worker.forkserver): ask it to fork a
worker, tell why it could not, start one, stop them all.

MM_FORKSERVER=0 switches the fork server off: every worker is then started by exec, as
before it existed. Kept cheap to import: `mm run` imports it on its way to the worker.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import sys

from vmm.worker import forkserver_proto as proto
from vmm.worker.forkserver_proto import ForkServerError

# The server answers once the worker is forked: a few ms on a host, longer in the lab
# (TCG), where it also re-stats every file it imported over 9p.
REPLY_TIMEOUT_S = 60.0
DEATH_WAIT_S = 2.0  # a server that hung up is dying: how long its fds may take to go
SERVER_CODE = "import gc; gc.disable(); from vmm.worker.forkserver import main; raise SystemExit(main())"


class NoServer(ForkServerError):
    """Nothing listens on the socket: none started yet, idle-exited, or killed."""


class Stale(ForkServerError):
    """The server's code or interpreter changed on disk since it started; it has exited."""


class Unanswered(ForkServerError):
    """The server took the request and said nothing in time: it may still fork the
    worker, so the launcher must not start another one by exec."""


class Vanished(ForkServerError):
    """The server hung up without answering (killed mid-request, or exiting)."""

    def __init__(self, message: str, pid: int) -> None:
        super().__init__(message)
        self.pid = pid


def enabled() -> bool:
    return os.environ.get("MM_FORKSERVER", "1") != "0"


def names_for(env: dict[str, str], entry: str = proto.ENTRY) -> proto.Names:
    """The server that starts workers with `env`'s PYTHONPATH (...) from this interpreter."""
    directory = proto.private_dir(proto.runtime_dir())
    return proto.Names(directory, proto.fingerprint(proto.interpreter_env(env), entry, proto.extra_preload(env)))


def server_argv(names: proto.Names, entry: str = proto.ENTRY) -> list[str]:
    return [sys.executable, "-S", "-c", SERVER_CODE, str(names.dir), names.fp, entry]


def connect(names: proto.Names) -> tuple[socket.socket, int]:
    """A connection to the live server and its pid; NoServer if there is none."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.connect(str(names.sock))
        pid, uid, _ = proto.peer_cred(sock)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise NoServer("no fork server is running") from None
    except OSError as exc:
        sock.close()
        raise ForkServerError(f"cannot reach the fork server at {names.sock}: {exc.strerror}") from None
    if uid != os.geteuid():
        sock.close()
        raise ForkServerError(f"the fork server at {names.sock} runs as uid {uid}, not {os.geteuid()}")
    return sock, pid


def request(names: proto.Names, message: dict, fds: list[int] = (), timeout: float | None = None) -> tuple[dict, int]:
    """Send one request; (reply, server pid). Vanished if it hung up without a reply,
    Unanswered if it said nothing within `timeout` (REPLY_TIMEOUT_S)."""
    timeout = REPLY_TIMEOUT_S if timeout is None else timeout
    sock, pid = connect(names)
    with sock:
        sock.settimeout(timeout)
        try:
            proto.send(sock, message, list(fds))
            reply, extra = proto.recv(sock)
        except socket.timeout:
            raise Unanswered(f"the fork server (pid {pid}) did not answer within {timeout:.0f} s",
                             f"kill {pid}, or set MM_FORKSERVER=0 to start workers by exec") from None
        except (ConnectionResetError, BrokenPipeError):
            reply, extra = None, []
        except ValueError as exc:
            raise ForkServerError(f"the fork server (pid {pid}) sent a bad reply: {exc}") from None
    for fd in extra:
        os.close(fd)
    if reply is None:
        raise Vanished(f"the fork server (pid {pid}) hung up without answering", pid)
    return reply, pid


def launch(names: proto.Names, argv: list[str], env: dict[str, str], ready_w: int, log_fd: int) -> int:
    """Have the server fork the worker `argv` (+ the ready fd); the worker's pid."""
    mask = os.umask(0)
    os.umask(mask)
    message = {"op": "launch", "argv": argv, "env": env, "cwd": os.getcwd(), "umask": mask}
    reply, pid = request(names, message, [ready_w, log_fd])
    if reply.get("ok"):
        return int(reply.get("pid") or 0)
    if reply.get("exiting"):
        raise NoServer(f"the fork server (pid {pid}) is exiting: {reply.get('error')}")
    if reply.get("stale"):
        raise Stale(f"the fork server (pid {pid}) is stale: {reply['stale']} changed since it started")
    raise ForkServerError(f"the fork server (pid {pid}) refused: {reply.get('error')}")


def has_writer(read_fd: int, server_pid: int) -> bool:
    """After the server vanished mid-request: did it fork the worker first? Once the
    server is gone (its fds with it), the ready pipe still has a writer, or data, only
    if a worker (or the child forking it) got the write end."""
    try:
        pidfd = os.pidfd_open(server_pid)
    except ProcessLookupError:
        pidfd = -1
    if pidfd >= 0:
        try:
            select.select([pidfd], [], [], DEATH_WAIT_S)
        finally:
            os.close(pidfd)
    poll = select.poll()
    poll.register(read_fd, select.POLLIN)
    events = dict(poll.poll(0)).get(read_fd, 0)
    return bool(events & select.POLLIN) or not events & select.POLLHUP


def ping(names: proto.Names, timeout: float = 5.0) -> dict:
    return request(names, {"op": "ping"}, timeout=timeout)[0]


def stop_all() -> list[int]:
    """Stop every fork server of this uid (`mm system prune`); their pids. Files of dead
    ones are removed; a directory that does not exist is not made."""
    directory = proto.runtime_dir()
    try:
        socks = sorted(p for p in directory.iterdir() if p.suffix == ".sock")
    except FileNotFoundError:
        return []
    stopped = []
    for path in socks:
        names = proto.Names(directory, path.stem)
        try:
            _, pid = request(names, {"op": "stop"}, timeout=5.0)
            stopped.append(pid)
        except NoServer:
            _remove_dead(names)
        except ForkServerError:
            pass  # exiting by itself already
    for lock in sorted(directory.glob("*.lock")):  # gone before (their lock and log), or starting
        names = proto.Names(directory, lock.stem)
        if not names.sock.exists() and not _remove_dead(names):
            pid = _starting(names)
            if pid and pid not in stopped:  # not one that is exiting on our "stop" just now
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
    return stopped


def _starting(names: proto.Names) -> int:
    """The pid of a server that holds its lock but does not listen yet (0 if none)."""
    try:
        pid = int(names.lock.read_text().strip() or 0)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            ours = b"vmm.worker.forkserver" in f.read() and os.stat(f"/proc/{pid}").st_uid == os.geteuid()
    except (OSError, ValueError):
        return 0
    return pid if ours else 0


def _remove_dead(names: proto.Names) -> bool:
    """A dead server's files, removed only while we hold its lock (no server starts
    meanwhile); False if a live one holds it."""
    import fcntl

    try:
        fd = os.open(names.lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        names.sock.unlink(missing_ok=True)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False  # alive after all (starting up)
    try:
        for leftover in (names.sock, names.log, names.lock):
            leftover.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True
