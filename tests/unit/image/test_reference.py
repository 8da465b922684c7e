"""Reference parsing: Docker Hub defaults, tags, digests, host:port registries, bad input."""
import pytest

from vmm.image.errors import ReferenceError_
from vmm.image.reference import parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, registry, repo, tag, digest", [
    ("alpine", "docker.io", "library/alpine", "latest", None),
    ("alpine:3.20", "docker.io", "library/alpine", "3.20", None),
    ("user/app", "docker.io", "user/app", "latest", None),
    ("docker.io/alpine", "docker.io", "library/alpine", "latest", None),
    ("index.docker.io/library/alpine:edge", "docker.io", "library/alpine", "edge", None),
    ("ghcr.io/org/team/app:v1", "ghcr.io", "org/team/app", "v1", None),
    ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", None),
    ("localhost/app:1", "localhost", "app", "1", None),
    (f"alpine@{D}", "docker.io", "library/alpine", None, D),
    (f"localhost:5000/a/b:t@{D}", "localhost:5000", "a/b", "t", D),
])
def test_parse(text, registry, repo, tag, digest):
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repo, tag, digest)


def test_familiar_and_api_host():
    assert parse("alpine").familiar() == "alpine:latest"
    assert parse("mm/default").familiar() == "mm/default:latest"
    assert str(parse("alpine")) == "docker.io/library/alpine:latest"
    assert parse("alpine").api_host == "registry-1.docker.io"
    assert parse("127.0.0.1:5000/x").api_host == "127.0.0.1:5000"
    assert parse(f"x@{D}").selector == D


@pytest.mark.parametrize("bad", ["", "Alpine", "alpine:", "a@sha256:123", "a:b:c:d", "a//b", " alpine", "a:-x"])
def test_bad(bad):
    with pytest.raises(ReferenceError_):
        parse(bad)
