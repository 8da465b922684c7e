"""The workload's stdio, held by the worker: the daemon side of `mm run`, `mm attach`
and `mm logs`.

mm-init runs the image's command as an exec session on the attach port
(`stdio=vsock`, guest/PROTOCOL.md section 4) and waits for the host before starting
it. The worker is that host: `Workload` connects as soon as the guest listens, so the
workload's output is captured whether or not a client is attached (as Docker's daemon
does), and its exit code arrives as an EXIT frame rather than from console scraping.

Everything the workload writes goes to `output.log` in the agent's own framing
(STDOUT / STDERR / EXIT frames, guest/PROTOCOL.md), so stdout and stderr stay apart
for `mm logs`. Clients attach through the API's `attach` op: the log from an offset is
replayed, then live frames follow, and the client's STDIN / STDIN_EOF / RESIZE /
SIGNAL frames go to the workload.

`ExitLineScanner` is the fallback for workloads on the serial console
(`stdio=console`): the first `MM-EXIT code=N signal=S` line init prints.
"""
from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time

from vmm.guest.protocol import HELLO, MAX_FRAME, Frame, encode
from vmm.timeline import mark

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Callable

_HDR = struct.Struct("<B3xI")
# Frames a client may send to the workload, and those only with stdin attached.
CLIENT_FRAMES = frozenset({Frame.STDIN, Frame.STDIN_EOF, Frame.RESIZE, Frame.SIGNAL})
STDIN_FRAMES = frozenset({Frame.STDIN, Frame.STDIN_EOF})
CONNECT_RETRY_S = 0.05
# Client input that arrives before the guest's stream is attached (the guest still boots)
# is kept, up to this much, and sent once it is.
MAX_PENDING_INPUT = 4 << 20


class FrameError(ValueError):
    """A peer sent something that is not a well-formed frame."""


class FrameSplitter:
    """Incremental frame parser for bytes arriving in arbitrary pieces."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= _HDR.size:
            if any(self._buf[1:4]):
                raise FrameError("frame header padding is not zero")
            ftype, length = _HDR.unpack_from(self._buf)
            if length > MAX_FRAME:
                raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < _HDR.size + length:
                break
            out.append((ftype, bytes(self._buf[_HDR.size:_HDR.size + length])))
            del self._buf[:_HDR.size + length]
        return out


def exit_result(payload: bytes) -> tuple[int, int]:
    """(code, signal) from an EXIT frame's payload."""
    if len(payload) != 8:
        raise FrameError(f"EXIT frame of {len(payload)} bytes, expected 8")
    code, sig = struct.unpack("<iI", payload)
    return code, sig


class ExitLineScanner:
    """Finds init's first `MM-EXIT code=N signal=S` line in console output fed in pieces."""

    PATTERN = re.compile(rb"MM-EXIT code=(\d{1,3}) signal=(\d{1,2})\b")
    KEEP = 64  # bytes carried over between pieces, enough for a line split across them

    def __init__(self) -> None:
        self._tail = b""
        self.result: tuple[int, int] | None = None

    def feed(self, data: bytes) -> None:
        if self.result is not None:
            return
        text = self._tail + data
        m = self.PATTERN.search(text)
        if m and m.end() < len(text):  # the line is complete (something follows the number)
            self.result = (int(m.group(1)), int(m.group(2)))
            return
        self._tail = text[-self.KEEP:]


class OutputLog:
    """output.log, opened once (before the worker jails itself) and appended to from the
    workload thread; it spans all starts of the machine."""

    def __init__(self, path) -> None:
        flags = os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | flags, 0o600)
        self._read_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.lock = threading.Lock()
        self.pos = os.fstat(self._fd).st_size

    def append(self, frame: bytes) -> int:
        """Append under the lock; the offset the frame starts at."""
        with self.lock:
            os.write(self._fd, frame)
            start, self.pos = self.pos, self.pos + len(frame)
        return start

    def read(self, start: int, end: int) -> bytes:
        return os.pread(self._read_fd, end - start, start) if start < end else b""

    def close(self) -> None:
        for fd in (self._fd, self._read_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class Workload:
    """The worker's end of the attach stream. Call `start()` once the VM runs.

    `connect()` returns a stream connected to the guest's attach port or raises; it is
    retried until it works or `close()` is called. Without `stdin_open` the workload's
    stdin is closed at once (Docker's default without -i). `on_exit(code)` runs on the loop
    thread once the EXIT frame arrives. Subscribers are API connections."""

    def __init__(self, loop, output: OutputLog, connect: Callable[[], socket.socket],
                 on_exit: Callable[[int], None] | None = None, log: Callable[[str], None] = print,
                 stdin_open: bool = False) -> None:
        self.loop, self.connect, self.on_exit, self.log = loop, connect, on_exit, log
        self.stdin_open = stdin_open
        self.output = output
        self._send_lock = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.sock: socket.socket | None = None
        self.exit_code: int | None = None
        self.pid: int | None = None
        self.closed = False
        self._output_seen = False  # for the timeline's first-output mark
        self._subscribers: dict[object, int] = {}  # connection -> log offset sent up to

    # -- the guest side (a thread of its own) ------------------------------------------
    def start(self) -> None:
        threading.Thread(target=self._run, name="workload", daemon=True).start()

    def _attach(self) -> socket.socket | None:
        while not self.closed:
            try:
                sock = self.connect()
            except Exception:
                mark("vmm.attach_refused")
                time.sleep(CONNECT_RETRY_S)  # init has not reached its listen() yet
                continue
            try:
                sock.sendall(encode(Frame.HELLO, HELLO))
                if not self.stdin_open:  # Docker without -i: the workload's stdin is at EOF
                    sock.sendall(encode(Frame.STDIN_EOF))
                mark("vmm.attached")
                return sock
            except OSError:
                sock.close()
        return None

    def _run(self) -> None:
        sock = self._attach()
        if sock is None:
            return
        with self._send_lock:
            try:
                for frame in self._pending:
                    sock.sendall(frame)
            except OSError as exc:
                self.log(f"workload input dropped: {exc}")
            self._pending, self._pending_bytes = [], 0
            self.sock = sock
        splitter = FrameSplitter()
        try:
            while True:
                data = sock.recv(256 * 1024)
                if not data:
                    break
                for ftype, payload in splitter.feed(data):
                    self._from_guest(ftype, payload)
        except (OSError, FrameError) as exc:
            if not self.closed:
                self.log(f"workload stream broke: {exc}")
        finally:
            self.loop.call_soon_threadsafe(self._stream_ended)

    def _from_guest(self, ftype: int, payload: bytes) -> None:
        if ftype == Frame.STARTED and len(payload) == 4:
            mark("vmm.workload_started")
            self.pid = struct.unpack("<I", payload)[0]
        elif ftype in (Frame.STDOUT, Frame.STDERR):
            if not self._output_seen:
                self._output_seen = True
                mark("vmm.first_output")
            self._append(encode(ftype, payload))
        elif ftype == Frame.EXIT:
            mark("vmm.workload_exited")
            code, _sig = exit_result(payload)
            self._append(encode(ftype, payload))
            self.loop.call_soon_threadsafe(lambda: self._exited(code))
        elif ftype == Frame.ERROR:
            message = payload.decode(errors="replace")
            self.log(f"workload: {message}")
            self._append(encode(Frame.STDERR, f"mm: {message}\n".encode()))
        # HELLO and anything newer are not ours to act on

    def _append(self, frame: bytes) -> None:
        start = self.output.append(frame)
        self.loop.call_soon_threadsafe(lambda: self._broadcast(start, frame))

    # -- the loop thread ----------------------------------------------------------------
    def _exited(self, code: int) -> None:
        self.exit_code = code
        if self.on_exit:
            self.on_exit(code)

    def _stream_ended(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _broadcast(self, start: int, frame: bytes) -> None:
        for conn, sent in list(self._subscribers.items()):
            if start + len(frame) > sent:  # a replay from the log may have sent it already
                conn.send_raw(frame[max(0, sent - start):])
                if conn in self._subscribers:
                    self._subscribers[conn] = start + len(frame)

    def subscribe(self, conn, rid: int, offset: int | None, stdin: bool, result: dict) -> None:
        """Upgrade `conn` to the frame stream: the log from `offset` (default: now), then
        live frames; the client's frames go to the workload."""
        with self.output.lock:
            end = self.output.pos
            start = end if offset is None else min(offset, end)
            replay = self.output.read(start, end)
        self._subscribers[conn] = end
        splitter = FrameSplitter()

        def on_data(data: bytes) -> None:
            try:
                frames = splitter.feed(data)
            except FrameError as exc:
                self.log(f"attach client: {exc}; disconnecting it")
                conn.close()
                return
            for ftype, payload in frames:
                if ftype in CLIENT_FRAMES and (stdin or ftype not in STDIN_FRAMES):
                    self.send(ftype, payload)

        conn.on_close = lambda: self._subscribers.pop(conn, None)
        conn.upgrade(rid, {**result, "offset": start}, on_data)
        if replay:
            conn.send_raw(replay)
        if self.exit_code is not None and self.sock is None:
            conn.close_after_flush()  # nothing more will come

    def send(self, ftype: int, payload: bytes) -> None:
        """Input for the workload; kept until the stream is attached, dropped once the
        workload has ended (as on a closed pipe)."""
        frame = encode(ftype, payload)
        with self._send_lock:
            sock = self.sock
            if sock is None:
                if self.exit_code is None and not self.closed:
                    if self._pending_bytes + len(frame) > MAX_PENDING_INPUT:
                        self.log("workload input dropped: the guest has not attached and 4 MiB are waiting")
                        return
                    self._pending.append(frame)
                    self._pending_bytes += len(frame)
                return
            try:
                sock.sendall(frame)
            except OSError as exc:
                self.log(f"workload input dropped: {exc}")

    def end_subscribers(self) -> None:
        for conn in list(self._subscribers):
            conn.close_after_flush()

    def close(self) -> None:
        """Stop attaching; the output log stays open (its owner closes it)."""
        self.closed = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
