"""The lab's exec agent: PID 1 inside the lab, chrooted into the host's filesystem.

Runs under the host's /usr/bin/python3 with -I -S, so it imports only the standard library
(this file is also imported on the host for the wire format). One TCP connection per
command, forwarded by QEMU from a 127.0.0.1 port of the host:

  client -> agent   one JSON line: {"token", "op": "exec"|"ping"|"poweroff", "argv", "env",
                    "cwd", "timeout", "refresh"}   (refresh: see Refresher)
  agent -> client   frames: kind (1 byte) + length (4 bytes, big endian) + payload
                    b"O" stdout bytes, b"E" stderr bytes, b"X" a JSON result
                    ({"rc": int, "timed_out": bool} or {"error": str}); X is the last frame.

The command gets /dev/null as stdin and runs in its own session; when the client goes away
or the timeout passes, the whole process group is killed. As PID 1 the agent also reaps
orphans, without taking the exit status of the commands it waits for itself.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HEADER = struct.Struct(">cI")
STDOUT, STDERR, RESULT = b"O", b"E", b"X"
MAX_REQUEST = 1 << 20
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Every command here starts its VMs with all of a VM's threads on one lab CPU
# (vmm.worker.affinity): TCG's SVM emulation corrupts guests whose device threads interrupt
# their vCPU from another lab CPU (docs/lab.md). A request's own env may override it.
LAB_ENV = {"MM_WORKER_CPUSET": "single"}


def frame(kind: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def read_frame(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _read_exact(sock, HEADER.size)
    kind, size = HEADER.unpack(head)
    return kind, _read_exact(sock, size)


def _read_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise ConnectionError("the lab agent closed the connection")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class Reaper:
    """Reaps orphans re-parented to PID 1, leaving our own commands to their Popen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ours: set[int] = set()

    def spawn(self, *args, **kwargs) -> subprocess.Popen:
        # Held across fork and registration so an instant exit is never mistaken for an orphan.
        with self.lock:
            proc = subprocess.Popen(*args, **kwargs)
            self.ours.add(proc.pid)
        return proc

    def forget(self, pid: int) -> None:
        with self.lock:
            self.ours.discard(pid)

    def run(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                time.sleep(0.2)
                continue
            if info is None:
                continue
            with self.lock:
                orphan = info.si_pid not in self.ours
                if orphan:
                    try:
                        os.waitpid(info.si_pid, 0)
                    except ChildProcessError:
                        pass
            if not orphan:
                time.sleep(0.01)  # its Popen.wait() is about to collect it


class Refresher:
    """Makes the lab's loose-cached code shares current when a request carries a new
    stamp of the host's code (vmm/lab/freshness.py says why). Thread-safe.

    A 9p share cannot be mounted afresh while anything still uses it (virtio-9p has one
    channel per tag, and a lazily unmounted mount keeps it: "no channels available"), so
    instead the kernel's caches are dropped: with no cached dentry, inode or page left
    for a file, its next look-up asks the host again. Files held open by running
    processes keep their view, as they should. The first stamp after boot is taken as
    current (the shares were mounted at boot)."""

    DROP_CACHES = "/proc/sys/vm/drop_caches"
    DROP_WAIT = 30.0  # seconds a command waits for the drop before it runs anyway

    def __init__(self) -> None:
        self.stamp: str | None = None
        self._lock = threading.Lock()

    def _drop_caches(self) -> str | None:
        """Drop dentries and inodes (an evicted inode's pages go with it); dirty pages are
        the lab's own writes, current by definition, so nothing is synced first (a sync
        once waited minutes on a writable share's backlog and hung every command). The
        write runs on a thread so a slow drop delays a command by DROP_WAIT at most."""
        errors: list[str] = []

        def drop() -> None:
            try:
                with open(self.DROP_CACHES, "w") as f:
                    f.write("2\n")
            except OSError as e:
                errors.append(f"dropping the lab's caches for the host's new code failed: {e}")

        worker = threading.Thread(target=drop, daemon=True)
        worker.start()
        worker.join(self.DROP_WAIT)
        return errors[0] if errors else None

    def apply(self, refresh) -> str | None:
        """None when the shares are current (caches dropped if need be), else an error."""
        if not refresh:
            return None
        stamp = refresh.get("stamp") if isinstance(refresh, dict) else None
        if not isinstance(stamp, str):
            return "bad refresh request"
        with self._lock:
            if self.stamp is not None and stamp != self.stamp:
                problem = self._drop_caches()
                if problem:
                    return problem
                print(f"[{_uptime():.2f}] mm-lab: the host's code changed: caches dropped", flush=True)
            self.stamp = stamp
        return None


class Agent:
    def __init__(self, token: str) -> None:
        self.token = token
        self.reaper = Reaper()
        self.refresher = Refresher()

    def serve(self, port: int) -> None:
        threading.Thread(target=self.reaper.run, daemon=True).start()
        srv = socket.create_server(("0.0.0.0", port), backlog=64, reuse_port=False)
        print(f"[{_uptime():.2f}] mm-lab: agent listening on port {port}", flush=True)
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                req = self._read_request(conn)
            except (OSError, ValueError) as exc:
                self._result(conn, {"error": f"bad request: {exc}"})
                return
            if not _same(str(req.get("token", "")), self.token):
                self._result(conn, {"error": "bad token"})
                return
            op = req.get("op")
            if op == "ping":
                self._result(conn, {"rc": 0, "uptime": _uptime()})
            elif op == "poweroff":
                self._result(conn, {"rc": 0})
                _poweroff()
            elif op == "exec":
                self.exec(conn, req)
            else:
                self._result(conn, {"error": f"unknown op {op!r}"})

    @staticmethod
    def _read_request(conn: socket.socket) -> dict:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                raise ValueError("connection closed before the request ended")
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ValueError("request too large")
        req = json.loads(data)
        if not isinstance(req, dict):
            raise ValueError("request is not an object")
        return req

    @staticmethod
    def _result(conn: socket.socket, result: dict) -> None:
        try:
            conn.sendall(frame(RESULT, json.dumps(result).encode()))
        except OSError:
            pass

    def exec(self, conn: socket.socket, req: dict) -> None:
        argv, env, cwd, timeout = req.get("argv"), req.get("env") or {}, req.get("cwd") or "/", req.get("timeout")
        problem = self.refresher.apply(req.get("refresh"))
        if problem:
            self._result(conn, {"error": problem})
            return
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            self._result(conn, {"error": "argv must be a non-empty list of strings"})
            return
        if not os.path.isdir(cwd):
            self._result(conn, {"error": f"the working directory {cwd} does not exist in the lab "
                                         "(the lab's /tmp is its own; shares keep their host paths)"})
            return
        full_env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", **LAB_ENV}
        full_env.update({str(k): str(v) for k, v in env.items()})
        try:
            proc = self.reaper.spawn(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=full_env, start_new_session=True,
            )
        except OSError as exc:
            # A shell's conventions: 127 not found, 126 found but not runnable.
            msg = f"mm lab: cannot run {argv[0]}: {exc.strerror or exc}\n"
            try:
                conn.sendall(frame(STDERR, msg.encode()))
            except OSError:
                pass
            self._result(conn, {"rc": 127 if isinstance(exc, FileNotFoundError) else 126, "timed_out": False})
            return
        try:
            timed_out = self._pump(conn, proc, timeout)
            rc = proc.wait()
        finally:
            self.reaper.forget(proc.pid)
        self._result(conn, {"rc": rc if rc >= 0 else 128 - rc, "timed_out": timed_out})

    def _pump(self, conn: socket.socket, proc: subprocess.Popen, timeout) -> bool:
        """Stream the command's output until both pipes close; kill it on timeout or hang-up."""
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, STDOUT)
        sel.register(proc.stderr, selectors.EVENT_READ, STDERR)
        sel.register(conn, selectors.EVENT_READ, None)
        open_pipes, timed_out = 2, False
        while open_pipes:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = sel.select(wait)
            if not events and deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                _kill_group(proc)
                deadline = None
                continue
            for key, _ in events:
                if key.data is None:  # the client hung up (or sent junk): stop the command
                    if not conn.recv(4096):
                        _kill_group(proc)
                        sel.unregister(conn)
                    continue
                data = os.read(key.fileobj.fileno(), 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    open_pipes -= 1
                    continue
                try:
                    conn.sendall(frame(key.data, data))
                except OSError:
                    _kill_group(proc)
        sel.close()
        return timed_out


def _same(a: str, b: str) -> bool:
    """Constant-time comparison without hmac (whose hashlib import costs a boot second here)."""
    x, y = a.encode(), b.encode()
    return len(x) == len(y) and sum(i ^ j for i, j in zip(x, y)) == 0


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def _poweroff() -> None:
    os.sync()
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(0x4321FEDC)  # LINUX_REBOOT_CMD_POWER_OFF; ACPI makes QEMU exit


def main(argv: list[str] | None = None) -> int:
    # No argparse: every module imported here is read over 9p while the lab boots.
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4 or args[0] != "--port" or args[2] != "--token-file" or not args[1].isdigit():
        print("usage: agent.py --port PORT --token-file FILE", file=sys.stderr)
        return 2
    port, token_file = int(args[1]), args[3]
    with open(token_file) as f:
        token = f.read().strip()
    try:
        Agent(token).serve(port)
    except BaseException as exc:  # PID 1 must not die silently: say why, then power off
        print(f"mm-lab: agent failed: {exc!r}", file=sys.stderr, flush=True)
        _poweroff()
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
