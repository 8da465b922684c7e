"""The worker's hold on the workload's stdio: frame splitting, the MM-EXIT scanner, the
output log, and `Workload` relaying between a peer speaking the agent's attach
protocol (a socketpair here; real guests in tests/e2e) and API subscribers."""
from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from vmm.guest.protocol import HELLO, Frame, encode
from vmm.worker.loop import Loop
from vmm.worker.workload import ExitLineScanner, FrameError, FrameSplitter, OutputLog, Workload


def test_frame_splitter_reassembles_frames_cut_anywhere():
    data = encode(Frame.STDOUT, b"hello") + encode(Frame.STDERR, b"") + encode(Frame.EXIT, struct.pack("<iI", 3, 0))
    for cut in range(len(data) + 1):
        s = FrameSplitter()
        frames = s.feed(data[:cut]) + s.feed(data[cut:])
        assert frames == [(Frame.STDOUT, b"hello"), (Frame.STDERR, b""), (Frame.EXIT, struct.pack("<iI", 3, 0))]


@pytest.mark.parametrize("bad", [b"\x21\x01\x00\x00\x00\x00\x00\x00",        # padding not zero
                                 struct.pack("<B3xI", 0x21, (1 << 20) + 1)])  # longer than MAX_FRAME
def test_frame_splitter_refuses_malformed_headers(bad):
    with pytest.raises(FrameError):
        FrameSplitter().feed(bad)


def test_exit_line_scanner_finds_the_first_complete_line_across_pieces():
    s = ExitLineScanner()
    for piece in (b"[ 1.2] boot\nmm-init: MM-EX", b"IT code=4", b"2 signal=0\n", b"MM-EXIT code=1 signal=0\n"):
        s.feed(piece)
    assert s.result == (42, 0)


def test_exit_line_scanner_waits_for_the_end_of_the_number():
    s = ExitLineScanner()
    s.feed(b"MM-EXIT code=12")
    assert s.result is None  # could still be 125
    s.feed(b"5 signal=0\r\n")
    assert s.result == (125, 0)


class FakeConn:
    """The part of vmm.api.server.Connection that Workload uses."""

    def __init__(self):
        self.sent, self.on_close, self.closed, self.on_data = bytearray(), None, False, None

    def upgrade(self, rid, result, on_data):
        self.result, self.on_data = result, on_data

    def send_raw(self, data):
        self.sent += data

    def close_after_flush(self):
        self.close()

    def close(self):
        self.closed = True
        if self.on_close:
            self.on_close()


@pytest.fixture
def loop():
    lp = Loop()
    t = threading.Thread(target=lp.run, daemon=True)
    t.start()
    yield lp
    lp.call_soon_threadsafe(lp.stop)
    t.join(5)
    lp.close()


def on_loop(loop, fn):
    done, box = threading.Event(), []
    loop.call_soon_threadsafe(lambda: (box.append(fn()), done.set()))
    assert done.wait(5)
    return box[0]


def until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _read_frames(sock, n):
    s, out = FrameSplitter(), []
    while len(out) < n:
        out += s.feed(sock.recv(65536))
    return out


def test_workload_logs_output_replays_to_late_subscribers_and_reports_the_exit(loop, tmp_path):
    guest, host = socket.socketpair()
    attempts = []

    def connect():
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("not listening yet")  # retried, as while the guest boots
        return host

    codes = []
    wl = Workload(loop, OutputLog(tmp_path / "output.log"), connect, on_exit=codes.append, log=lambda m: None)
    wl.start()
    hello, eof = _read_frames(guest, 2)
    assert hello == (Frame.HELLO, HELLO) and eof == (Frame.STDIN_EOF, b"")  # no -i: stdin closed
    guest.sendall(encode(Frame.HELLO, HELLO) + encode(Frame.STARTED, struct.pack("<I", 77))
                  + encode(Frame.STDOUT, b"out1\n") + encode(Frame.STDERR, b"err1\n"))
    until(lambda: wl.output.pos == 2 * 8 + 10)
    early = FakeConn()
    on_loop(loop, lambda: wl.subscribe(early, 1, 0, True, {"state": "running"}))
    live = FakeConn()
    on_loop(loop, lambda: wl.subscribe(live, 2, None, False, {"state": "running"}))
    assert early.result == {"state": "running", "offset": 0} and live.result["offset"] == wl.output.pos
    guest.sendall(encode(Frame.STDOUT, b"out2\n") + encode(Frame.EXIT, struct.pack("<iI", 3, 0)))
    until(lambda: codes == [3])
    assert wl.pid == 77
    want_all = (encode(Frame.STDOUT, b"out1\n") + encode(Frame.STDERR, b"err1\n")
                + encode(Frame.STDOUT, b"out2\n") + encode(Frame.EXIT, struct.pack("<iI", 3, 0)))
    until(lambda: bytes(early.sent) == want_all)
    assert bytes(live.sent) == want_all[2 * 8 + 10:]  # only what came after it attached
    assert (tmp_path / "output.log").read_bytes() == want_all
    # Client input reaches the workload; stdin only from a client attached with stdin.
    on_loop(loop, lambda: early.on_data(encode(Frame.STDIN, b"typed") + encode(Frame.RESIZE, struct.pack("<HH", 30, 100))))
    on_loop(loop, lambda: live.on_data(encode(Frame.STDIN, b"ignored") + encode(Frame.SIGNAL, struct.pack("<I", 2))))
    got = _read_frames(guest, 3)
    assert got == [(Frame.STDIN, b"typed"), (Frame.RESIZE, struct.pack("<HH", 30, 100)),
                   (Frame.SIGNAL, struct.pack("<I", 2))]
    # A malformed frame from a client disconnects that client only.
    on_loop(loop, lambda: live.on_data(b"\xff\x01\x02\x03\x00\x00\x00\x00"))
    assert live.closed and not early.closed
    wl.close()
    guest.close()


def test_workload_keeps_stdin_open_with_dash_i(loop, tmp_path):
    guest, host = socket.socketpair()
    wl = Workload(loop, OutputLog(tmp_path / "output.log"), lambda: host, log=lambda m: None, stdin_open=True)
    wl.start()
    assert _read_frames(guest, 1) == [(Frame.HELLO, HELLO)]
    guest.settimeout(0.2)
    with pytest.raises(socket.timeout):
        guest.recv(64)  # no STDIN_EOF follows
    wl.close()
    guest.close()


def test_input_sent_before_the_guest_attached_is_delivered_once_it_is(loop, tmp_path):
    guest, host = socket.socketpair()
    ready = threading.Event()

    def connect():
        if not ready.is_set():
            raise ConnectionRefusedError("still booting")
        return host

    wl = Workload(loop, OutputLog(tmp_path / "output.log"), connect, log=lambda m: None, stdin_open=True)
    wl.start()
    client = FakeConn()
    on_loop(loop, lambda: wl.subscribe(client, 1, 0, True, {}))
    on_loop(loop, lambda: client.on_data(encode(Frame.STDIN, b"early line\n") + encode(Frame.STDIN_EOF)))
    ready.set()
    assert _read_frames(guest, 3) == [(Frame.HELLO, HELLO), (Frame.STDIN, b"early line\n"), (Frame.STDIN_EOF, b"")]
    wl.close()
    guest.close()
