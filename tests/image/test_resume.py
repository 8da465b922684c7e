"""A pull killed mid-download leaves nothing that looks complete, and the next pull resumes it;
transient registry failures are retried with backoff, persistent ones end in a typed error.

The killed `mm image pull` process is a real subprocess, fetching through a throttling TCP
relay on 127.0.0.1 so there is time to kill it mid-layer. The retry tests pull through
tests/image/faultproxy.py, an HTTP proxy in front of the real registry that answers 503,
429 or 502, or resets the connection, for the first N requests of a manifest or blob.
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


# -- transient failures: retries, backoff, and giving up cleanly -------------------------------

@pytest.fixture(scope="module")
def retry_image(registry, tmp_path_factory):
    """mm/retry:r, one 256 KiB layer; returns (layer digest, config digest, layer bytes)."""
    import json

    root = tmp_path_factory.mktemp("retry")
    write_layout(root, [tar_bytes([("file", "f", os.urandom(256 << 10))])], tag="r")
    registry.push(root, "mm/retry", "r")
    desc = json.loads((root / "index.json").read_text())["manifests"][0]
    manifest = json.loads((root / "blobs/sha256" / desc["digest"][7:]).read_text())
    layer = manifest["layers"][0]["digest"]
    return layer, manifest["config"]["digest"], registry.blob_file(layer).read_bytes()


@pytest.fixture
def proxy(registry):
    from tests.image.faultproxy import FaultProxy

    fp = FaultProxy(registry.host)
    yield fp
    fp.close()


@pytest.fixture
def sleeps(monkeypatch):
    """The backoff delays the registry client asks for (each slept only briefly, to keep tests fast)."""
    from vmm.image import registry as reg

    asked: list[float] = []

    class Clock:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            asked.append(seconds)
            time.sleep(min(seconds, 0.005))

    monkeypatch.setattr(reg, "time", Clock())
    return asked


def _pull_through(proxy, cache) -> str:
    from vmm.image import parse
    from vmm.image.pull import pull

    return pull(parse(f"{proxy.host}/mm/retry:r"), cache, quiet=True)


def _backoff(n: int) -> list[float]:
    from vmm.image.registry import BACKOFF

    return [BACKOFF * 2 ** i for i in range(n)]


def _assert_nothing_stored(cache, digest: str) -> None:
    assert not cache.has_blob(digest) and not cache.refs()


def test_manifest_503_retried(proxy, retry_image, cache, sleeps):
    from tests.image.faultproxy import Fault

    proxy.faults = [Fault("/manifests/r", "503", 2)]
    digest = _pull_through(proxy, cache)
    actions = [e.action for e in proxy.requests("/manifests/r")]
    assert actions == ["503", "503", "forwarded"]
    assert sleeps == _backoff(2)  # 0.25 s, then 0.5 s
    assert lookup(f"{proxy.host}/mm/retry:r").digest == digest


def test_blob_reset_before_answer_retried(proxy, retry_image, cache, sleeps):
    from tests.image.faultproxy import Fault

    layer, _, _ = retry_image
    proxy.faults = [Fault(layer, "reset", 2)]
    _pull_through(proxy, cache)
    assert [e.action for e in proxy.requests(layer)] == ["reset", "reset", "forwarded"]
    assert sleeps == _backoff(2) and cache.has_blob(layer)


def test_blob_cut_mid_body_resumed_with_range(proxy, retry_image, cache, sleeps):
    """Half a body, then the connection closes, twice: each retry asks only for the bytes still missing."""
    from tests.image.faultproxy import Fault

    layer, _, blob = retry_image
    proxy.faults = [Fault(layer, "cut", 2)]
    _pull_through(proxy, cache)
    asked = proxy.requests(layer)
    assert [e.action for e in asked] == ["cut", "cut", "forwarded"]
    half = len(blob) // 2
    assert [e.range for e in asked] == [None, f"bytes={half}-", f"bytes={half + (len(blob) - half) // 2}-"]
    assert sleeps == _backoff(2)
    assert cache.read_blob(layer) == blob and not list((cache.root / "tmp").glob("*.partial"))


def test_mixed_transient_statuses(proxy, retry_image, cache, sleeps):
    from tests.image.faultproxy import Fault

    _, config, _ = retry_image
    proxy.faults = [Fault(config, "429"), Fault(config, "502"), Fault(config, "reset")]
    _pull_through(proxy, cache)
    assert [e.action for e in proxy.requests(config)] == ["429", "502", "reset", "forwarded"]
    assert sleeps == _backoff(3) and cache.has_blob(config)


def test_not_found_is_not_retried(proxy, registry, cache, sleeps):
    from vmm.image import parse
    from vmm.image.errors import ImageNotFound
    from vmm.image.pull import pull

    with pytest.raises(ImageNotFound):
        pull(parse(f"{proxy.host}/mm/retry:missing"), cache, quiet=True)
    assert len(proxy.requests("/manifests/missing")) == 1 and sleeps == []


def test_persistent_503_gives_up_typed(proxy, retry_image, cache, sleeps, registry):
    from tests.image.faultproxy import Fault
    from vmm.image.errors import RegistryUnavailable
    from vmm.image.registry import ATTEMPTS

    layer, _, _ = retry_image
    proxy.faults = [Fault(layer, "503", -1)]
    with pytest.raises(RegistryUnavailable, match=f"answered 503 for blob {layer}.*{ATTEMPTS} attempts") as err:
        _pull_through(proxy, cache)
    assert "try again later" in err.value.hint
    assert len(proxy.requests(layer)) == ATTEMPTS and sleeps == _backoff(ATTEMPTS - 1)
    _assert_nothing_stored(cache, layer)
    assert not (cache.root / "tmp").exists() or not list((cache.root / "tmp").glob("*.partial"))
    assert resolve(f"{registry.host}/mm/retry:r").rootfs_path.exists()  # the cache is still usable


def test_persistent_reset_gives_up_typed(proxy, retry_image, cache, sleeps):
    from tests.image.faultproxy import Fault
    from vmm.image.errors import RegistryUnavailable
    from vmm.image.registry import ATTEMPTS

    proxy.faults = [Fault("/manifests/r", "reset", -1)]
    with pytest.raises(RegistryUnavailable, match="connection to .* broke") as err:
        _pull_through(proxy, cache)
    assert err.value.hint and len(proxy.requests("/manifests/r")) == ATTEMPTS
    assert not cache.refs()


def test_persistent_cut_keeps_only_a_resumable_prefix(proxy, retry_image, cache, sleeps, registry):
    """Bodies cut every time: a typed error; no blob or reference, only tmp/'s partial file,
    which holds genuine leading bytes, and the next pull finishes from there."""
    from tests.image.faultproxy import Fault
    from vmm.image.errors import RegistryUnavailable
    from vmm.image.registry import ATTEMPTS

    layer, _, blob = retry_image
    proxy.faults = [Fault(layer, "cut", -1)]
    with pytest.raises(RegistryUnavailable, match=f"downloading {layer} failed after {ATTEMPTS}") as err:
        _pull_through(proxy, cache)
    assert "resumes" in err.value.hint and len(proxy.requests(layer)) == ATTEMPTS
    _assert_nothing_stored(cache, layer)
    kept = cache.partial_path(layer).read_bytes()
    assert 0 < len(kept) < len(blob) and blob.startswith(kept)
    assert resolve(f"{registry.host}/mm/retry:r").layers and cache.read_blob(layer) == blob
    assert not cache.partial_path(layer).exists()


def test_nothing_listening_is_unreachable_not_unavailable(cache, sleeps):
    """Refused connections are retried too, then named for what they are: a wrong or stopped registry."""
    from vmm.image import parse
    from vmm.image.errors import RegistryError, RegistryUnavailable
    from vmm.image.pull import pull
    from vmm.image.registry import ATTEMPTS

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = s.getsockname()[1]
        with pytest.raises(RegistryError, match=f"cannot reach 127.0.0.1:{port}") as err:
            pull(parse(f"127.0.0.1:{port}/mm/retry:r"), cache, quiet=True)
    assert not isinstance(err.value, RegistryUnavailable) and "running" in err.value.hint
    assert sleeps == _backoff(ATTEMPTS - 1) and not cache.refs()


def test_503_before_the_auth_challenge(auth_registry, tmp_path, cache, sleeps):
    """A transient failure on the first try, then the 401: the challenge is still answered."""
    import base64
    import json

    from tests.image.conftest import PASSWORD, USER
    from tests.image.faultproxy import Fault, FaultProxy
    from vmm.image import parse
    from vmm.image.pull import pull

    write_layout(tmp_path / "lay", [tar_bytes([("file", "f", "auth")])], tag="a")
    auth_registry.push(tmp_path / "lay", "mm/flaky-private", "a", creds=f"{USER}:{PASSWORD}")
    fp = FaultProxy(auth_registry.host, [Fault("/manifests/a", "503", 1)])
    try:
        docker = tmp_path / "docker"
        docker.mkdir()
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        (docker / "config.json").write_text(json.dumps({"auths": {fp.host: {"auth": token}}}))
        assert pull(parse(f"{fp.host}/mm/flaky-private:a"), cache, quiet=True)
        assert [e.action for e in fp.requests("/manifests/a")] == ["503", "forwarded", "forwarded"]  # 503, 401, 200
        assert sleeps == _backoff(1)
    finally:
        fp.close()


def test_retry_after_is_honoured_and_capped(proxy, retry_image, cache, sleeps):
    from tests.image.faultproxy import Fault
    from vmm.image.registry import BACKOFF, MAX_RETRY_AFTER

    proxy.faults = [Fault("/manifests/r", "429", 1, {"Retry-After": "3"}),
                    Fault("/manifests/r", "503", 1, {"Retry-After": "86400"}),  # capped
                    Fault("/manifests/r", "503", 1, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})]
    _pull_through(proxy, cache)
    assert [e.action for e in proxy.requests("/manifests/r")] == ["429", "503", "503", "forwarded"]
    assert sleeps == [3.0, MAX_RETRY_AFTER, BACKOFF * 4]  # a date is not used: plain backoff
