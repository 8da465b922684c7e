"""A pull killed mid-download leaves nothing that looks complete, and the next pull resumes it.

The `mm image pull` process is a real subprocess, fetching through a throttling TCP relay
on 127.0.0.1 so there is time to kill it mid-layer.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.unit.image.ocitools import tar_bytes, write_layout
from vmm.image import lookup, resolve

pytestmark = pytest.mark.registry

RATE = 1 << 20  # bytes per second through the relay


class SlowRelay:
    """Forwards 127.0.0.1:port to the registry, the registry→client direction throttled."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, 0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, RATE), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, rate: int) -> None:
        try:
            while data := src.recv(16384):
                dst.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_killed_pull_then_retry(registry, tmp_path, cache):
    write_layout(tmp_path / "big", [tar_bytes([("file", "blob", os.urandom(3 << 20))])], tag="b")
    registry.push(tmp_path / "big", "mm/big", "b")
    relay = SlowRelay(("127.0.0.1", registry.port))
    slow_ref = f"127.0.0.1:{relay.port}/mm/big:b"
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "image", "pull", "-q", slow_ref],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = cache.root / "tmp"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        partials = list(tmp.glob("*.partial")) if tmp.exists() else []
        if partials and partials[0].stat().st_size > 256 << 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    relay.close()
    assert partials, "the pull never started writing its layer"
    size_at_kill = partials[0].stat().st_size
    assert 0 < size_at_kill < 3 << 20
    assert lookup(slow_ref) is None and not cache.has_blob("sha256:" + partials[0].name.split(".")[0])

    # Same blobs through the direct address: the partial layer is resumed (Range), then verified.
    img = resolve(f"{registry.host}/mm/big:b")
    assert img.layers and cache.has_blob(img.layers[0]["digest"])
    assert not list(tmp.glob("*.partial"))
    assert img.rootfs_path.exists()


def test_resume_uses_range(registry, tmp_path, cache):
    """A partial file's bytes are kept (Range request): bad kept bytes fail the digest, then a clean retry works."""
    from vmm.image.errors import DigestMismatch

    write_layout(tmp_path / "r", [tar_bytes([("file", "f", os.urandom(1 << 20))])], tag="r")
    registry.push(tmp_path / "r", "mm/resume", "r")
    ref = f"{registry.host}/mm/resume:r"
    digest = resolve(ref).layers[0]["digest"]
    blob = registry.blob_file(digest).read_bytes()
    partial = cache.partial_path(digest)

    def forget():
        for rec in cache.refs():
            cache.remove_ref(rec["name"])
        cache.gc()
        assert not cache.has_blob(digest)

    forget()
    partial.write_bytes(blob[: len(blob) // 2])  # a genuine first half: resumed, verified
    assert resolve(ref).layers and cache.has_blob(digest) and not partial.exists()
    forget()
    partial.write_bytes(b"\0" * (len(blob) // 2))  # a wrong first half: kept, so the digest cannot match
    with pytest.raises(DigestMismatch):
        resolve(ref)
    assert not partial.exists() and not cache.has_blob(digest)
    assert resolve(ref).layers and cache.has_blob(digest)
