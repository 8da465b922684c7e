"""Credentials from DOCKER_CONFIG/config.json, challenges, and which registries get plain HTTP."""
import base64
import json

import pytest

from vmm.image import auth
from vmm.image.errors import AuthError
from vmm.image.registry import is_insecure


def write_config(tmp_path, auths):
    (tmp_path / "config.json").write_text(json.dumps({"auths": auths}))


def b64(text):
    return base64.b64encode(text.encode()).decode()


def test_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    write_config(tmp_path, {"https://index.docker.io/v1/": {"auth": b64("hub:pw")},
                            "127.0.0.1:5000": {"auth": b64("me:se:cret")},
                            "https://ghcr.io": {"username": "u", "password": "p"}})
    assert auth.credentials("docker.io") == ("hub", "pw")
    assert auth.credentials("127.0.0.1:5000") == ("me", "se:cret")
    assert auth.credentials("ghcr.io") == ("u", "p")
    assert auth.credentials("quay.io") is None


def test_missing_and_bad_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert auth.credentials("docker.io") is None
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(AuthError):
        auth.credentials("docker.io")
    write_config(tmp_path, {"docker.io": {"auth": "!!!"}})
    with pytest.raises(AuthError):
        auth.credentials("docker.io")


def test_challenge():
    scheme, params = auth.parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/alpine:pull"}
    assert auth.parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_insecure(monkeypatch):
    monkeypatch.delenv("MM_INSECURE_REGISTRIES", raising=False)
    assert is_insecure("localhost:5000") and is_insecure("127.0.0.1:5000") and is_insecure("127.8.9.1")
    assert is_insecure("[::1]:5000")
    assert not is_insecure("registry-1.docker.io") and not is_insecure("10.0.0.1:5000")
    monkeypatch.setenv("MM_INSECURE_REGISTRIES", "10.0.0.1:5000, reg.lan")
    assert is_insecure("10.0.0.1:5000") and is_insecure("reg.lan:443")
