"""The agent's wire framing, host side (the reference is guest/PROTOCOL.md).

A frame is `type:u8, 0, 0, 0, length:u32 little-endian` and `length` payload bytes
(at most MAX_FRAME). Requests carry NUL-terminated `key=value` records.
"""
from __future__ import annotations

import enum
import socket
import struct

from vmm.guest.errors import AgentError, AgentProtocolError

VERSION = 1
HELLO = b"mm-agent %d" % VERSION
MAX_FRAME = 1 << 20
CHUNK = 64 * 1024
_HDR = struct.Struct("<B3xI")


class Frame(enum.IntEnum):
    HELLO = 0x01
    EXEC = 0x02
    COPY_IN = 0x03
    COPY_OUT = 0x04
    SHUTDOWN = 0x05
    STDIN = 0x10
    STDIN_EOF = 0x11
    RESIZE = 0x12
    SIGNAL = 0x13
    STARTED = 0x20
    STDOUT = 0x21
    STDERR = 0x22
    EXIT = 0x23
    ERROR = 0x24
    DATA = 0x30
    DATA_EOF = 0x31
    OK = 0x32


def encode(ftype: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME:
        raise AgentProtocolError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _HDR.pack(ftype, len(payload)) + payload


def records(pairs: list[tuple[str, str]]) -> bytes:
    """Encodes request records; a NUL inside a key or value cannot be sent."""
    out = bytearray()
    for key, value in pairs:
        if "\0" in key or "\0" in value or "=" in key or not key:
            raise AgentError(f"cannot send {key!r}={value!r}: NUL bytes or '=' in the key",
                             hint="argv, env and paths cannot contain NUL bytes")
        out += f"{key}={value}".encode() + b"\0"
    return bytes(out)


def parse_records(payload: bytes) -> list[tuple[str, str]]:
    if payload and not payload.endswith(b"\0"):
        raise AgentProtocolError("request records must end with NUL")
    out = []
    for rec in payload.split(b"\0")[:-1]:
        key, sep, value = rec.partition(b"=")
        if not sep or not key:
            raise AgentProtocolError(f"malformed record {rec[:40]!r}")
        out.append((key.decode(), value.decode()))
    return out


class FrameReader:
    """Reads whole frames from a stream socket; every length is checked."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def _exact(self, n: int) -> bytes | None:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                if got == 0:
                    return None
                raise AgentError("the agent closed the stream in the middle of a frame")
            got += k
        return bytes(buf)

    def read(self) -> tuple[int, bytes] | None:
        """The next (type, payload), or None at a clean end of stream."""
        hdr = self._exact(_HDR.size)
        if hdr is None:
            return None
        ftype, length = _HDR.unpack(hdr)
        if hdr[1:4] != b"\0\0\0" or length > MAX_FRAME:
            raise AgentProtocolError(f"bad frame header {hdr.hex()}")
        payload = self._exact(length) if length else b""
        if payload is None:
            raise AgentError("the agent closed the stream in the middle of a frame")
        return ftype, payload
