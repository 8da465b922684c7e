"""The typed client of a worker's control API (one short connection per call).

    client = WorkerClient(paths.api_socket)
    client.status()            -> dict (state, pid, uptime...)
    client.pause(); client.resume()
    client.stop(timeout=10)    -> dict (exit_code, reason) once the VM has ended
    client.kill("KILL")
    client.wait()              -> dict (exit_code, reason)
    sock = client.console()    # raw stream: guest console out, keystrokes in
    sock = client.exec(port)   # connected stream to the guest agent's vsock port

Errors the worker reports come back as the matching `vmm.api.errors` class.
"""
from __future__ import annotations

import itertools
import socket
from pathlib import Path

from vmm.api import protocol
from vmm.api.errors import ProtocolError, WorkerUnreachable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Any

_ids = itertools.count(1)


class WorkerClient:
    def __init__(self, path: str | Path, timeout: float | None = 10.0) -> None:
        self.path = str(path)
        self.timeout = timeout

    def _connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise WorkerUnreachable(f"cannot reach the worker at {self.path}: {exc.strerror}") from None
        return sock

    def _exchange(self, sock: socket.socket, op: str, args: dict[str, Any], want_fd: bool = False):
        rid = next(_ids)
        try:
            sock.sendall(protocol.Request(op=op, args=args, id=rid).encode())
            line, fds = _read_line(sock, want_fd)
        except socket.timeout:
            raise WorkerUnreachable(f"the worker did not answer `{op}` in time",
                                    "it may be stuck; `mm kill` ends it") from None
        except (ConnectionResetError, BrokenPipeError):
            # e.g. the VM ended and the worker closed its socket with us still in the backlog
            raise WorkerUnreachable(f"the worker closed the connection during `{op}`") from None
        return protocol.decode_response(line, expect_id=rid), fds

    def call(self, op: str, io_timeout: float | None = -1.0, /, **args: Any) -> dict[str, Any]:
        """One request/response; `io_timeout` None waits forever, -1 uses the client's."""
        sock = self._connect(self.timeout if io_timeout == -1.0 else io_timeout)
        try:
            result, _ = self._exchange(sock, op, args)
            return result
        finally:
            sock.close()

    # -- typed operations ----------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        return self.call("hello")

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def pause(self) -> dict[str, Any]:
        return self.call("pause")

    def resume(self) -> dict[str, Any]:
        return self.call("resume")

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        # the worker answers once the VM has ended: allow for the guest's grace period.
        return self.call("stop", timeout + 30.0, timeout=timeout)

    def kill(self, signal: str = "KILL") -> dict[str, Any]:
        return self.call("kill", signal=signal)

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        return self.call("wait", timeout)

    def console(self, offset: int | None = None) -> socket.socket:
        """A blocking socket carrying the guest console both ways (close it to detach).

        With `offset`, console.log from that byte on is replayed first, without gaps or
        repeats, so an attached `mm run` misses nothing printed before it connected."""
        sock = self._connect(self.timeout)
        try:
            self._exchange(sock, "console", {} if offset is None else {"offset": offset})
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock

    def attach(self, offset: int | None = None, stdin: bool = False) -> tuple[socket.socket, int]:
        """A blocking socket carrying the workload's stdio as agent frames (STDOUT,
        STDERR, EXIT from the guest; STDIN, STDIN_EOF, RESIZE, SIGNAL to it, stdin ones
        only with `stdin`), and the output.log offset it starts at. With `offset`, the
        log from there is replayed first, without gaps or repeats."""
        sock = self._connect(self.timeout)
        try:
            args: dict[str, Any] = {"stdin": stdin}
            if offset is not None:
                args["offset"] = offset
            result, _ = self._exchange(sock, "attach", args)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock, int(result.get("offset", 0))

    def exec(self, port: int) -> socket.socket:
        """A stream connected to `port` of the guest's vsock (the exec agent's port)."""
        sock = self._connect(self.timeout)
        try:
            _, fds = self._exchange(sock, "exec", {"port": port}, want_fd=True)
        finally:
            sock.close()
        if len(fds) != 1:
            for fd in fds:
                socket.close(fd)
            raise ProtocolError(f"`exec` response carried {len(fds)} descriptors, expected 1")
        stream = socket.socket(fileno=fds[0])
        stream.settimeout(None)
        return stream


def _read_line(sock: socket.socket, want_fd: bool) -> tuple[bytes, list[int]]:
    """Read exactly one response line (byte by byte after the first chunk would be slow,
    so peek for the newline and consume only up to it: a console stream may follow)."""
    fds: list[int] = []
    buf = bytearray()
    while True:
        if want_fd and not fds:
            data, got, _, _ = socket.recv_fds(sock, protocol.MAX_LINE, 4)
            fds.extend(got)
            chunk = data
        else:
            peek = sock.recv(protocol.MAX_LINE, socket.MSG_PEEK)
            nl = peek.find(b"\n")
            chunk = sock.recv(nl + 1 if nl >= 0 else len(peek))
        if not chunk:
            raise WorkerUnreachable("the worker closed the connection without answering")
        buf += chunk
        nl = buf.find(b"\n")
        if nl >= 0:
            return bytes(buf[: nl + 1]), fds
        if len(buf) > protocol.MAX_LINE:
            raise ProtocolError("response line too long")
