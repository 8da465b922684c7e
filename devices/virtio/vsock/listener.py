"""The device's host-side Unix socket: where host clients connect to write `CONNECT <port>`."""
from __future__ import annotations

import os
import socket
import stat

from . import VsockError


def open_listener(path: str) -> socket.socket:
    """Listen on `path`, replacing a stale socket file nobody listens on."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise VsockError(f"vsock socket {path} is in use by another process")
            except ConnectionRefusedError:
                os.unlink(path)
            finally:
                probe.close()
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        s.bind(path)
        s.listen(512)
    except OSError as e:
        s.close()
        raise VsockError(f"cannot listen on vsock socket {path}: {e.strerror}") from None
    return s
