"""Copy in and out through the agent's tar streams."""
from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile

import pytest

from vmm.guest.errors import AgentError
from vmm.guest.protocol import HELLO, Frame, FrameReader, encode, records


def sha(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_50mib_file_in_and_out(agent, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(50 << 20))
    agent.copy_in(src, str(tmp_path / "guest"))
    assert sha(tmp_path / "guest" / "big.bin") == sha(src)
    agent.copy_out(str(tmp_path / "guest" / "big.bin"), tmp_path / "back")
    assert sha(tmp_path / "back" / "big.bin") == sha(src)


def test_tree_with_symlink_long_names_and_modes(agent, tmp_path):
    src = tmp_path / "tree"
    deep = src / ("d" * 120) / "sub"
    deep.mkdir(parents=True)
    (deep / ("f" * 150)).write_text("long")
    (src / "exe").write_text("#!/bin/sh\n")
    (src / "exe").chmod(0o750)
    (src / "link").symlink_to("exe")
    (src / "empty").mkdir()
    agent.copy_in(src, str(tmp_path / "g"))
    agent.copy_out(str(tmp_path / "g" / "tree"), tmp_path / "back")
    for root in (tmp_path / "g" / "tree", tmp_path / "back" / "tree"):
        assert (root / ("d" * 120) / "sub" / ("f" * 150)).read_text() == "long"
        assert os.readlink(root / "link") == "exe"
        assert (root / "exe").stat().st_mode & 0o777 == 0o750
        assert (root / "empty").is_dir()


def test_copy_out_of_missing_path(agent, tmp_path):
    with pytest.raises(AgentError, match="No such file"):
        agent.copy_out("/no/such/path", tmp_path)


def _copy_in_raw(agent_proc, dest: str, archive: bytes) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(agent_proc.path))
        s.sendall(encode(Frame.HELLO, HELLO) + encode(Frame.COPY_IN, records([("path", dest)]))
                  + encode(Frame.DATA, archive) + encode(Frame.DATA_EOF))
        r = FrameReader(s)
        assert r.read()[0] == Frame.HELLO
        return r.read()


def test_agent_refuses_dotdot_paths(agent_proc, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    t, payload = _copy_in_raw(agent_proc, str(tmp_path / "dest"), buf.getvalue())
    assert t == Frame.ERROR and b"unsafe path" in payload
    assert not (tmp_path / "escaped").exists()


def test_agent_refuses_corrupt_header(agent_proc, tmp_path):
    t, payload = _copy_in_raw(agent_proc, str(tmp_path / "dest"), b"\x01" * 512)
    assert t == Frame.ERROR and b"bad tar header" in payload


def test_agent_reports_truncated_archive(agent_proc, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.size = 10000
        tar.addfile(info, io.BytesIO(b"x" * 10000))
    t, payload = _copy_in_raw(agent_proc, str(tmp_path / "dest"), buf.getvalue()[:2048])
    assert t == Frame.ERROR and b"truncated" in payload
