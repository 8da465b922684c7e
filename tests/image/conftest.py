"""Real registries for image tests: Debian's docker-registry on 127.0.0.1 (open, and with htpasswd basic auth).

Images are written as OCI layouts in Python and pushed with skopeo, as a user would.
"""
from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # bcrypt hashes for htpasswd auth, from glibc (present in 3.11)
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

USER, PASSWORD = "tester", "s3cret"

pytestmark = pytest.mark.registry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """One running docker-registry; `host` is 127.0.0.1:PORT."""

    def __init__(self, root: Path, htpasswd: Path | None = None, auth: dict | None = None) -> None:
        self.root, self.port = root, _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = root / "storage"
        config = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                  "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
                  "http": {"addr": self.host}}
        if htpasswd:
            config["auth"] = {"htpasswd": {"realm": "mm-test", "path": str(htpasswd)}}
        if auth:
            config["auth"] = auth
        (root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
        self.proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://{self.host}/v2/", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("docker-registry did not start")

    def push(self, layout: Path, name: str, tag: str = "latest", all_platforms: bool = False,
             creds: str | None = None, fmt: str | None = None) -> None:
        """skopeo copy of `layout`'s `tag`; `fmt` "v2s2" converts to Docker schema2 on the way."""
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
        if all_platforms:
            cmd.append("--all")
        if fmt:
            cmd += ["--format", fmt]
        if creds:
            cmd += ["--dest-creds", creds]
        cmd += [f"oci:{layout}:{tag}", f"docker://{self.host}/{name}:{tag}"]
        subprocess.run(cmd, check=True, capture_output=True)

    def blob_file(self, digest: str) -> Path:
        hexd = digest[7:]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _need(tool: str) -> None:
    if not shutil.which(tool):
        pytest.skip(f"{tool} is not installed (./setup.sh installs it)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    _need("docker-registry"), _need("skopeo")
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    _need("docker-registry"), _need("skopeo")
    root = tmp_path_factory.mktemp("auth-registry")
    (root / "htpasswd").write_text(f"{USER}:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n")
    reg = Registry(root, root / "htpasswd")
    yield reg
    reg.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private image cache and no docker credentials unless a test writes some."""
    monkeypatch.setenv("MM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    from vmm.image import Store

    return Store()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    """docker-registry with bearer-token auth, tokens from a local token server."""
    _need("docker-registry"), _need("skopeo"), _need("openssl")
    from tests.image.tokenserver import TokenServer

    root = tmp_path_factory.mktemp("token-registry")
    tokens = TokenServer(root, USER, PASSWORD)
    reg = Registry(root, auth=tokens.registry_auth())
    reg.tokens = tokens
    yield reg
    reg.stop()
    tokens.stop()
