"""The host ends of the virtio socket checks: an echo server and a concurrent echo client.

Both run many streams on one thread with `selectors`. The client opens every stream
first (so they really are concurrent), then sends random bytes and checks that exactly
those bytes come back. `vsock_connect(uds, port)` is the host side of Firecracker's
vsock model: connect to the device's Unix socket and write `CONNECT <port>\\n`.
"""
from __future__ import annotations

import os
import selectors
import socket
import threading
import time


class EchoServer(threading.Thread):
    """Echo every stream accepted on `listener` until `stop()`; counts streams that ended."""

    def __init__(self, listener: socket.socket) -> None:
        super().__init__(daemon=True)
        self.listener = listener
        self.listener.setblocking(False)
        self.done = 0
        self.bytes = 0
        self.errors = 0
        self._stop_r, self._stop_w = os.pipe()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self.join(10)
        self.listener.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        pending: dict[socket.socket, bytearray] = {}
        while True:
            for key, events in sel.select():
                if key.data == "stop":
                    return
                if key.data == "accept":
                    self._accept(sel, pending)
                    continue
                self._serve(sel, key.fileobj, events, pending)

    def _accept(self, sel, pending) -> None:
        while True:
            try:
                s, _ = self.listener.accept()
            except BlockingIOError:
                return
            s.setblocking(False)
            pending[s] = bytearray()
            sel.register(s, selectors.EVENT_READ, "stream")

    def _serve(self, sel, s: socket.socket, events: int, pending) -> None:
        buf = pending[s]
        try:
            if events & selectors.EVENT_WRITE and buf:
                del buf[:s.send(buf)]
            if events & selectors.EVENT_READ:
                data = s.recv(1 << 16)
                if not data:
                    self._close(sel, s, pending, eof=True)
                    return
                self.bytes += len(data)
                buf += data
                del buf[:s.send(buf)]
        except BlockingIOError:
            pass
        except OSError:
            self.errors += 1
            self._close(sel, s, pending, eof=False)
            return
        sel.modify(s, selectors.EVENT_WRITE if buf else selectors.EVENT_READ, "stream")

    def _close(self, sel, s, pending, eof: bool) -> None:
        buf = pending.pop(s)
        sel.unregister(s)
        if eof and buf:  # the peer half-closed with our echo still queued: finish it
            s.setblocking(True)
            try:
                s.sendall(buf)
            except OSError:
                self.errors += 1
                eof = False
        s.close()
        self.done += eof


def vsock_connect(uds: str, port: int, timeout: float = 60.0) -> socket.socket:
    """A stream to guest `port` through the device's Unix socket (`CONNECT`/`OK` handshake)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(uds)
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        # Peek, then take exactly the line: stream bytes after it stay in the socket.
        peek = s.recv(64, socket.MSG_PEEK)
        if not peek:
            s.close()
            raise ConnectionError(f"vsock CONNECT {port}: closed after {line!r}")
        nl = peek.find(b"\n")
        line += s.recv(nl + 1 if nl >= 0 else len(peek))
        if len(line) > 64:
            break
    if not line.startswith(b"OK ") or not line.endswith(b"\n"):
        s.close()
        raise ConnectionError(f"vsock CONNECT {port}: answered {line!r}")
    return s


def echo_clients(connect, n: int, size: int, timeout: float = 300.0) -> dict:
    """Open `n` streams with `connect()`, send `size` random bytes on each, check the
    echo. Returns {"ok": streams whose echo matched, "connected": n opened, "errors": [...]}."""
    streams, errors = [], []
    for _ in range(n):
        try:
            streams.append(connect())
        except OSError as e:
            errors.append(f"connect: {e}")
    sel = selectors.DefaultSelector()
    state = {}
    for s in streams:
        s.setblocking(False)
        payload = os.urandom(size)
        state[s] = [memoryview(payload), payload, bytearray()]
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    ok, deadline = 0, time.monotonic() + timeout
    while state and time.monotonic() < deadline:
        for key, events in sel.select(1.0):
            s = key.fileobj
            out, payload, got = state[s]
            try:
                if events & selectors.EVENT_WRITE and out:
                    out = state[s][0] = out[s.send(out[:1 << 16]):]
                    if not out:
                        s.shutdown(socket.SHUT_WR)
                        sel.modify(s, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    data = s.recv(1 << 16)
                    got += data
                    if data and len(got) < size:
                        continue
                    good = bytes(got) == payload
                    ok += good
                    if not good:
                        errors.append(f"echo mismatch: {len(got)} of {size} bytes back")
                    sel.unregister(s)
                    s.close()
                    del state[s]
            except BlockingIOError:
                pass
            except OSError as e:
                errors.append(f"stream: {e}")
                sel.unregister(s)
                s.close()
                del state[s]
    if state:
        errors.append(f"{len(state)} streams unfinished after {timeout} s")
        for s in state:
            s.close()
    return {"ok": ok, "connected": len(streams), "errors": errors[:5]}
