"""The agent protocol's host side: framing, records, the frame reader's checks."""
from __future__ import annotations

import socket
import struct

import pytest

from vmm.guest.errors import AgentError, AgentProtocolError
from vmm.guest.protocol import HELLO, MAX_FRAME, Frame, FrameReader, encode, parse_records, records


def test_encode_header_layout():
    raw = encode(Frame.STDIN, b"abc")
    assert raw[:8] == bytes([0x10, 0, 0, 0]) + struct.pack("<I", 3)
    assert raw[8:] == b"abc"


def test_hello_names_the_version():
    assert HELLO == b"mm-agent 1"


def test_records_round_trip():
    pairs = [("arg", "sh"), ("arg", "-c"), ("arg", "echo a=b"), ("env", "X=1")]
    assert parse_records(records(pairs)) == pairs


@pytest.mark.parametrize("bad", [("arg", "a\0b"), ("k=x", "v"), ("", "v")])
def test_records_refuse_what_cannot_be_framed(bad):
    with pytest.raises(AgentError):
        records([bad])


def test_parse_records_requires_terminator():
    with pytest.raises(AgentProtocolError):
        parse_records(b"arg=sh")


def test_encode_refuses_oversized_payload():
    with pytest.raises(AgentProtocolError):
        encode(Frame.DATA, b"x" * (MAX_FRAME + 1))


def _reader_over(data: bytes) -> FrameReader:
    a, b = socket.socketpair()
    a.sendall(data)
    a.close()
    return FrameReader(b)


def test_reader_reads_frames_then_clean_eof():
    r = _reader_over(encode(Frame.STDOUT, b"hi") + encode(Frame.EXIT, struct.pack("<iI", 3, 0)))
    assert r.read() == (Frame.STDOUT, b"hi")
    assert r.read() == (Frame.EXIT, struct.pack("<iI", 3, 0))
    assert r.read() is None


def test_reader_rejects_lengths_over_the_limit():
    r = _reader_over(struct.pack("<B3xI", Frame.STDOUT, MAX_FRAME + 1))
    with pytest.raises(AgentProtocolError):
        r.read()


def test_reader_rejects_nonzero_reserved_bytes():
    r = _reader_over(bytes([0x21, 1, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(AgentProtocolError):
        r.read()


def test_reader_reports_truncated_frame():
    r = _reader_over(encode(Frame.STDOUT, b"hello")[:10])
    with pytest.raises(AgentError):
        r.read()
