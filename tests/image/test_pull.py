"""Pulling from a real docker-registry: plain, multi-platform, auth, corruption, truncation, unsafe layers."""
from __future__ import annotations

import base64
import json
import threading

import pytest

from tests.image.conftest import PASSWORD, USER
from tests.unit.image.ocitools import tar_bytes, write_layout
from vmm.image import lookup, parse, resolve
from vmm.image.errors import AuthError, DigestMismatch, ImageNotFound, RegistryError, UnsafePathError
from vmm.image.pull import pull

pytestmark = pytest.mark.registry

BASE = tar_bytes([("dir", "bin"), ("file", "bin/tool", "v1", 0o755), ("dir", "etc"), ("file", "etc/a", "a"),
                  ("file", "etc/b", "b"), ("dir", "var/cache"), ("file", "var/cache/x", "x")])
TOP = tar_bytes([("file", "etc/.wh.a", ""), ("file", "var/cache/.wh..wh..opq", ""), ("file", "etc/c", "c"),
                 ("symlink", "bin/alias", "tool"), ("hardlink", "etc/b2", "etc/b")])


@pytest.fixture(scope="module")
def pushed(registry, tmp_path_factory):
    """Images in the shared registry: layered (gzip, zstd), multi-platform."""
    root = tmp_path_factory.mktemp("layouts")
    write_layout(root / "layered", [BASE, TOP], tag="1")
    registry.push(root / "layered", "mm/layered", "1")
    write_layout(root / "zstd", [BASE], tag="z", how="zstd")
    registry.push(root / "zstd", "mm/zstd", "z")
    write_layout(root / "multi", [BASE], tag="m", arches=("arm64", "amd64"))
    registry.push(root / "multi", "mm/multi", "m", all_platforms=True)
    return root


def test_pull_layered_and_build(registry, pushed, cache):
    ref = f"{registry.host}/mm/layered:1"
    img = resolve(ref)
    assert img.digest == pull(parse(ref), cache, quiet=True)  # second pull: blobs cached
    assert len(img.layers) == 2 and img.config["Cmd"] == ["/bin/sh"]
    assert img.rootfs_path.exists() and lookup(img.digest[:19]).digest == img.digest


def test_pull_zstd_and_by_digest(registry, pushed, cache):
    img = resolve(f"{registry.host}/mm/zstd:z")
    again = resolve(f"{registry.host}/mm/zstd@{img.digest}")
    assert again.digest == img.digest
    assert img.rootfs_path.exists()


def test_multiplatform_index(registry, pushed, cache):
    img = resolve(f"{registry.host}/mm/multi:m")
    assert img.index_digest and img.config_blob["architecture"] == "amd64"


def test_missing_image(registry, cache):
    with pytest.raises(ImageNotFound):
        resolve(f"{registry.host}/mm/nope:1")


def test_basic_auth(auth_registry, tmp_path, cache, monkeypatch):
    write_layout(tmp_path / "lay", [BASE], tag="a")
    auth_registry.push(tmp_path / "lay", "mm/private", "a", creds=f"{USER}:{PASSWORD}")
    ref = f"{auth_registry.host}/mm/private:a"
    with pytest.raises(AuthError):
        resolve(ref)
    docker = tmp_path / "docker"
    docker.mkdir()
    token = base64.b64encode(f"{USER}:wrong".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    with pytest.raises(AuthError):
        resolve(ref)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {f"http://{auth_registry.host}": {"auth": token}}}))
    assert resolve(ref).layers


def _single_layer_image(registry, tmp_path, name, payload_entries):
    write_layout(tmp_path / name, [tar_bytes(payload_entries)], tag="t")
    registry.push(tmp_path / name, f"mm/{name}", "t")
    img_manifest = json.loads((tmp_path / name / "index.json").read_text())["manifests"][0]
    manifest = json.loads((tmp_path / name / "blobs/sha256" / img_manifest["digest"][7:]).read_text())
    return f"{registry.host}/mm/{name}:t", manifest["layers"][0]["digest"]


def _assert_clean(cache, digest):
    assert not cache.has_blob(digest)
    assert not cache.refs()


def test_corrupt_blob_refused(registry, tmp_path, cache):
    ref, layer = _single_layer_image(registry, tmp_path, "corrupt", [("file", "f", "x" * 5000)])
    data = bytearray(registry.blob_file(layer).read_bytes())
    data[100] ^= 0xFF
    registry.blob_file(layer).write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        resolve(ref)
    _assert_clean(cache, layer)


def test_truncated_blob_refused(registry, tmp_path, cache):
    ref, layer = _single_layer_image(registry, tmp_path, "truncated", [("file", "f", "y" * 50000)])
    path = registry.blob_file(layer)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises((DigestMismatch, RegistryError)):
        resolve(ref)
    _assert_clean(cache, layer)


def test_unsafe_layer_from_registry(registry, tmp_path, cache):
    ref, _ = _single_layer_image(registry, tmp_path, "evil", [("dir", "d"), ("symlink", "d/up", "../../../.."),
                                                               ("file", "d/up/tmp/pwned", "!")])
    img = resolve(ref)
    with pytest.raises(UnsafePathError, match="outside the root"):
        img.rootfs_path
    assert not img.rootfs_file().exists() and not list((cache.root / "tmp").iterdir())


def test_concurrent_pulls_same_image(registry, pushed, cache):
    ref, errors = parse(f"{registry.host}/mm/layered:1"), []

    def one():
        try:
            pull(ref, cache, quiet=True)
        except Exception as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(list((cache.root / "blobs/sha256").iterdir())) == 4  # manifest, config, 2 layers
    assert resolve(str(ref)).rootfs_path.exists()


def test_bearer_token_auth(token_registry, tmp_path, cache):
    write_layout(tmp_path / "lay", [BASE], tag="t")
    token_registry.push(tmp_path / "lay", "mm/tokened", "t", creds=f"{USER}:{PASSWORD}")
    ref = f"{token_registry.host}/mm/tokened:t"
    with pytest.raises(AuthError, match="token server"):
        resolve(ref)
    docker = tmp_path / "docker"
    docker.mkdir()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {token_registry.host: {"auth": token}}}))
    assert resolve(ref).rootfs_path.exists()
    last = token_registry.tokens.requests[-1]
    assert last["authorized"] and last["query"]["scope"] == ["repository:mm/tokened:pull"]
    assert last["query"]["service"] == ["mm-test-registry"]


def test_cli_pull_json(registry, pushed, cache, capsys):
    from vmm.cli.main import main

    ref = f"{registry.host}/mm/layered:1"
    assert main(["image", "pull", ref, "--json", "--rootfs"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == ref and out["digest"].startswith("sha256:")
    assert main(["image", "inspect", ref, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["digest"] == out["digest"] and data["rootfs"] == out["rootfs"] and data["rootfs_built"]


def _served_manifest(registry, name: str, tag: str) -> tuple[dict, str, str]:
    """(document, content type, Docker-Content-Digest) as the registry serves `name:tag`."""
    import httpx

    from vmm.image import manifest as mf

    resp = httpx.get(f"http://{registry.host}/v2/{name}/manifests/{tag}", headers={"Accept": mf.ACCEPT})
    resp.raise_for_status()
    return resp.json(), resp.headers["content-type"], resp.headers["docker-content-digest"]


def _debugfs(image, cmd: str) -> str:
    import subprocess

    return subprocess.run(["debugfs", "-R", cmd, str(image)], capture_output=True, text=True, check=True).stdout


def _names(image, directory: str) -> set[str]:
    """Entry names in `directory` of an ext4 image (debugfs `ls -p`: /inode/mode/uid/gid/name/size/)."""
    lines = _debugfs(image, f"ls -p {directory}").splitlines()
    return {line.split("/")[5] for line in lines if line.count("/") >= 6} - {".", ".."}


def test_docker_schema2_pull_and_build(registry, tmp_path, cache):
    """skopeo converts the OCI layout to Docker schema2 on push; we pull and build that."""
    from tests.unit.image.ocitools import digest_of
    from vmm.image import manifest as mf

    write_layout(tmp_path / "v2s2", [BASE, TOP], tag="d")
    registry.push(tmp_path / "v2s2", "mm/v2s2", "d", fmt="v2s2")
    served, kind, served_digest = _served_manifest(registry, "mm/v2s2", "d")
    assert kind == mf.DOCKER_MANIFEST and served["mediaType"] == mf.DOCKER_MANIFEST  # really schema2

    img = resolve(f"{registry.host}/mm/v2s2:d")
    assert img.digest == served_digest and img.manifest == served
    assert img.manifest["config"]["mediaType"] == mf.DOCKER_CONFIG
    assert [layer["mediaType"] for layer in img.layers] == [mf.DOCKER_LAYER_GZIP] * 2
    assert [layer["digest"] for layer in img.layers] == [layer["digest"] for layer in served["layers"]]
    assert all(cache.has_blob(d) for d in [img.digest, img.config_digest, *(x["digest"] for x in img.layers)])
    assert img.config["Cmd"] == ["/bin/sh"] and img.config_blob["architecture"] == "amd64"
    assert img.layer_pairs() == [(img.layers[0]["digest"], digest_of(BASE)), (img.layers[1]["digest"], digest_of(TOP))]

    rootfs = img.rootfs_path
    assert _names(rootfs, "/etc") == {"b", "b2", "c"}  # a whited out, c added by TOP
    assert _names(rootfs, "/var/cache") == set()  # opaque: BASE's x hidden
    assert _debugfs(rootfs, "cat /bin/tool") == "v1"
    assert 'Fast link dest: "tool"' in _debugfs(rootfs, "stat /bin/alias")
    assert "Links: 2" in _debugfs(rootfs, "stat /etc/b2")
    assert lookup(img.digest[:19]).digest == served_digest


def test_docker_manifest_list(registry, tmp_path, cache):
    """A multi-platform image pushed as a Docker manifest list (v2s2) resolves to linux/amd64."""
    from vmm.image import manifest as mf

    write_layout(tmp_path / "dlist", [BASE], tag="l", arches=("arm64", "amd64"))
    registry.push(tmp_path / "dlist", "mm/dlist", "l", all_platforms=True, fmt="v2s2")
    served, kind, served_digest = _served_manifest(registry, "mm/dlist", "l")
    assert kind == mf.DOCKER_LIST
    amd64 = next(d for d in served["manifests"] if d["platform"]["architecture"] == "amd64")
    img = resolve(f"{registry.host}/mm/dlist:l")
    assert img.index_digest == served_digest and img.digest == amd64["digest"]
    assert img.manifest["mediaType"] == mf.DOCKER_MANIFEST and img.config_blob["architecture"] == "amd64"
    assert img.rootfs_path.exists()
