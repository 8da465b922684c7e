"""What the worker fork server and its clients share: where the server's socket lives, the
fingerprint that names it, and the wire format.

One server serves one (uid, code tree, interpreter, PYTHON*/LD_* variables) combination, whatever
MM_STATE is: the machines' state directories come in each request's spec. Its files
live in a private runtime directory (mode 0700, owned by the uid; `/run/mm/forkserver`
for root, `$XDG_RUNTIME_DIR/mm-forkserver` or `/tmp/mm-forkserver-UID` otherwise;
MM_FORKSERVER_DIR overrides it) and are named by the fingerprint:

    FP.sock   the listening socket (SOCK_SEQPACKET, mode 0600)
    FP.lock   flock()ed by the live server for its whole life: at most one per name
    FP.log    the server's own stdout/stderr

Requests and replies are one JSON object per SOCK_SEQPACKET message; a launch request
carries two fds by SCM_RIGHTS (the ready pipe's write end, the worker.log fd):

    {"op": "launch", "argv": [SPEC], "env": {...}, "cwd": "/..", "umask": 18}
        -> {"ok": true, "pid": WORKER} | {"ok": false, "stale": PATH, "error": ..} | {"ok": false, "error": ..}
    {"op": "ping"}  -> {"ok": true, "pid": SERVER, "files": N}
    {"op": "stop"}  -> {"ok": true}, and the server exits
"""
from __future__ import annotations

import array
import json
import os
import socket
import stat
import struct
import sys
from pathlib import Path

from vmm.errors import MMError
from vmm.fds import close_all_but

# Part of the fingerprint: a client never talks to a server speaking another version.
PROTOCOL = 1
MAX_MESSAGE = 1 << 20  # a request is an environment and a few paths; far below this
MAX_FDS = 4
ENTRY = "vmm.worker.main:main"  # what a launch request runs in the forked worker
_UCRED = struct.Struct("3i")


class ForkServerError(MMError):
    """The fork server cannot be used (the launcher then starts the worker by exec)."""


READY_FD = 3  # where a worker holds the ready pipe's write end, however it started


def worker_fds(log_fd: int, ready_fd: int, keep: tuple[int, ...] = ()) -> int:
    """In a worker-to-be, exec'd (vmm.worker.launch) or forked (vmm.worker.forkserver):
    stdin /dev/null, stdout and stderr `log_fd`, the ready pipe's `ready_fd` moved to
    READY_FD, every other fd closed but `keep` (a spare's prepared guest RAM, vmm.prepared_ram,
    above its FD_FLOOR), so a worker holds the same fds, number for number, whichever way
    it started (and the fds it opens next get the same numbers). READY_FD."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    if ready_fd != READY_FD:
        os.dup2(ready_fd, READY_FD)  # over /dev/null's or the log's spare copy, if either was there
    close_all_but(keep, low=READY_FD + 1)
    return READY_FD


def runtime_dir() -> Path:
    env = os.environ.get("MM_FORKSERVER_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/mm/forkserver")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "mm-forkserver"
    return Path(f"/tmp/mm-forkserver-{os.geteuid()}")


def private_dir(path: Path) -> Path:
    """`path`, created 0700 if missing; refused unless it is a real directory owned by us
    and closed to everyone else (a socket anyone could replace would run their code)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ForkServerError(f"cannot make the fork server's directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ForkServerError(f"{path} is not a private directory of uid {os.geteuid()} "
                              f"(mode {stat.S_IMODE(st.st_mode):o}, owner {st.st_uid})",
                              "remove it; the next mm run makes it again with mode 0700")
    return path


def extra_preload(env: dict[str, str]) -> list[str]:
    """MM_FORKSERVER_PRELOAD: more modules (comma-separated) for the server to import,
    e.g. a factory module every worker of a deployment (or a test suite) imports."""
    return [m.strip() for m in env.get("MM_FORKSERVER_PRELOAD", "").split(",") if m.strip()]


def interpreter_env(env: dict[str, str]) -> str:
    """What in an environment shapes an interpreter only as it starts (PYTHONPATH,
    PYTHONHASHSEED, PYTHONMALLOC..., the dynamic loader's LD_*): a forked worker cannot
    take these from its request, so they name the server instead."""
    keys = sorted(k for k in env if k.startswith(("PYTHON", "LD_")))
    return "\0".join(f"{k}={env[k]}" for k in keys)


def fingerprint(interp_env: str, entry: str = ENTRY, preload: list[str] = ()) -> str:
    """The server's name: the protocol, our uid, the interpreter (its real path, version
    and prefix, so a venv is its own), the code tree `vmm` lives in, the start-up
    environment (`interpreter_env`: PYTHONPATH...), the entry point and the extra
    preloads. The files' contents are not in it: the server re-checks those on every
    request (`Imported.stale`)."""
    import vmm

    tree = os.path.dirname(os.path.dirname(os.path.abspath(vmm.__file__)))
    parts = [str(PROTOCOL), str(os.geteuid()), os.path.realpath(sys.executable), sys.version, sys.prefix,
             tree, interp_env, entry, ",".join(preload)]
    try:  # the built-in module: hashlib's OpenSSL binding costs ~4 ms of every mm run
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256
    return sha256("\0".join(parts).encode()).hexdigest()[:20]


class Names:
    """The three files of the server named by `fp` in `directory`."""

    def __init__(self, directory: Path, fp: str) -> None:
        self.dir, self.fp = directory, fp
        self.sock = directory / f"{fp}.sock"
        self.lock = directory / f"{fp}.lock"
        self.log = directory / f"{fp}.log"


def peer_cred(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    data = json.dumps(message).encode()
    if len(data) > MAX_MESSAGE:
        raise ForkServerError(f"fork server message too large ({len(data)} bytes)")
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], ancillary)


def recv(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One message and the fds that came with it; (None, []) at end of stream. A message
    that is not one JSON object, or was cut short, raises ValueError (its fds closed)."""
    # MSG_CMSG_CLOEXEC: the fds arrive close-on-exec, never leaked to a later exec
    data, ancillary, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[:len(payload) - len(payload) % arr.itemsize])
            fds.extend(arr)
    if not data and not fds:
        return None, []
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ValueError("message or its fds cut short")
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        for fd in fds:
            os.close(fd)
        raise
    return message, fds
