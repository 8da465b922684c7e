"""Serving the control API inside a worker's event loop.

`ApiServer` listens on the Unix socket and turns each line into a `Request` for the
handler. A handler returns a result dict (answered at once), `DEFERRED` (it answers
later with `conn.reply`, e.g. `wait`), or upgrades the connection (`console`, `exec`).
A connection handles its requests one at a time, in order. Output is buffered and
written when the socket is writable; a reader that falls too far behind a console
stream is disconnected rather than growing the worker's memory.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from vmm.api import protocol
from vmm.api.errors import ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Any, Callable, Protocol
else:
    Protocol = object  # at run time these classes only document the interfaces

DEFERRED = object()
MAX_OUTBUF = 4 * 1024 * 1024


class EventLoop(Protocol):
    def add_reader(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_reader(self, fd: int) -> None: ...
    def add_writer(self, fd: int, callback: Callable[[], None]) -> None: ...
    def remove_writer(self, fd: int) -> None: ...


class Handler(Protocol):
    def handle(self, req: protocol.Request, conn: "Connection") -> Any: ...


class Connection:
    def __init__(self, server: "ApiServer", sock: socket.socket) -> None:
        self.server, self.sock, self.loop = server, sock, server.loop
        self.fd = sock.fileno()
        self._in = bytearray()
        self._out = bytearray()
        self.busy = False
        self.closed = False
        self._closing = False
        self._raw: Callable[[bytes], None] | None = None
        self.on_close: Callable[[], None] | None = None
        sock.setblocking(False)
        self.loop.add_reader(self.fd, self._readable)

    # -- input ---------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        if self._raw is not None:
            self._raw(data)
            return
        self._in += data
        self._process()

    def _process(self) -> None:
        while not self.busy and not self.closed and self._raw is None:
            nl = self._in.find(b"\n")
            if nl < 0:
                if len(self._in) > protocol.MAX_LINE:
                    self._send(protocol.error(0, ProtocolError("request line too long")))
                    self.close_after_flush()
                return
            line = bytes(self._in[:nl])
            del self._in[: nl + 1]
            self._dispatch(line)

    def _dispatch(self, line: bytes) -> None:
        try:
            req = protocol.decode_request(line)
        except ProtocolError as exc:
            self._send(protocol.error(0, exc))
            return
        try:
            result = self.server.handler.handle(req, self)
        except Exception as exc:  # every failure becomes an error response, never a dead worker
            self._send(protocol.error(req.id, exc))
            return
        if result is DEFERRED:
            self.busy = True
        elif self._raw is None and not self.closed:
            self._send(protocol.ok(req.id, result))

    # -- output --------------------------------------------------------------------------

    def reply(self, rid: int, result: dict[str, Any] | None = None) -> None:
        """Answer a deferred request and go on with the next one."""
        self._send(protocol.ok(rid, result))
        self.busy = False
        self._process()

    def reply_error(self, rid: int, exc: BaseException) -> None:
        self._send(protocol.error(rid, exc))
        self.busy = False
        self._process()

    def upgrade(self, rid: int, result: dict[str, Any], on_data: Callable[[bytes], None]) -> None:
        """Answer `rid`, then treat the connection as a raw byte stream both ways."""
        self._send(protocol.ok(rid, result))
        self._raw = on_data
        if self._in:
            data, self._in = bytes(self._in), bytearray()
            on_data(data)

    def send_raw(self, data: bytes) -> None:
        if len(self._out) + len(data) > MAX_OUTBUF:
            self.close()  # a stuck console reader must not grow the worker without bound
            return
        self._send(data)

    def send_fd(self, rid: int, result: dict[str, Any], fd: int) -> None:
        """Answer `rid` with `fd` attached (SCM_RIGHTS), then close this connection."""
        line = protocol.ok(rid, result)
        self.sock.setblocking(True)
        try:
            if self._out:
                self.sock.sendall(self._out)
                self._out.clear()
            socket.send_fds(self.sock, [line], [fd])
        finally:
            self.close()

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
        was_empty = not self._out
        self._out += data
        if was_empty:
            self._writable()

    def _writable(self) -> None:
        try:
            n = self.sock.send(self._out)
        except BlockingIOError:
            n = 0
        except OSError:
            self.close()
            return
        del self._out[:n]
        if self._out:
            self.loop.add_writer(self.fd, self._writable)
        else:
            self.loop.remove_writer(self.fd)
            if self._closing:
                self.close()

    def close_after_flush(self) -> None:
        self._closing = True
        if not self._out:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self.sock.close()
        self.server.connections.discard(self)
        if self.on_close is not None:
            self.on_close()


class ApiServer:
    """Listens on `path` (mode 0600) and feeds requests to `handler`."""

    def __init__(self, loop: EventLoop, path: Path, handler: Handler) -> None:
        self.loop, self.path, self.handler = loop, Path(path), handler
        self.connections: set[Connection] = set()
        self.closed = False
        try:
            self.path.unlink()  # a socket left by a worker that died
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        self.sock.listen(64)
        self.sock.setblocking(False)
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            sock, _ = self.sock.accept()
        except BlockingIOError:
            return
        self.connections.add(Connection(self, sock))

    def close(self) -> None:
        """Stop listening; each connection closes once its pending output is written."""
        if self.closed:
            return
        self.closed = True
        for conn in list(self.connections):
            conn.close_after_flush()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
