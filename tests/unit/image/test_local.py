"""Store, import (OCI layout, oci-archive, docker-archive), rootfs builds, default image, CLI."""
import json
import os

import pytest

from tests.unit.image.ocitools import digest_of, tar_bytes, tar_dir, write_docker_archive, write_layout
from vmm.cli.main import main
from vmm.image import Store, create_writable_disk, lookup, resolve
from vmm.image.default import build_default
from vmm.image.errors import ArchiveError, DigestMismatch, ImageNotFound, ManifestError
from vmm.image.importer import import_path
from vmm.image.rootfs import build

LAYERS = [tar_bytes([("dir", "bin"), ("file", "bin/hello", "hi", 0o755), ("file", "bin/old", "o")]),
          tar_bytes([("file", "bin/.wh.old", ""), ("file", "etc/motd", "welcome")])]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_CACHE", str(tmp_path / "cache"))
    return Store()


def test_blob_digest_checked(store):
    with pytest.raises(DigestMismatch):
        store.put_bytes(b"abc", "sha256:" + "0" * 64)
    assert not list((store.root / "blobs").rglob("*0000*"))
    d = store.put_bytes(b"abc")
    assert store.read_blob(d) == b"abc" and d == digest_of(b"abc")


def test_import_layout_archive_and_docker(store, tmp_path):
    digest = write_layout(tmp_path / "lay", LAYERS, tag="v1")
    name, got = import_path(tmp_path / "lay", "example.com/app:v1")
    assert (name, got) == ("example.com/app:v1", digest)
    name, got = import_path(tar_dir(tmp_path / "lay", tmp_path / "lay.tar"), "other:v2")
    assert name == "docker.io/library/other:v2" and got == digest
    write_docker_archive(tmp_path / "d.tar", LAYERS, "saved/app:3")
    name, dgst = import_path(tmp_path / "d.tar")
    assert name == "docker.io/saved/app:3"
    img = lookup("saved/app:3")
    assert img.digest == dgst and len(img.layers) == 2 and img.config["Cmd"] == ["/bin/true"]
    with pytest.raises(ArchiveError, match="does not name"):
        import_path(tmp_path / "lay")
    with pytest.raises(ArchiveError):
        import_path(tmp_path / "missing")


def test_multiplatform_index_picks_amd64(store, tmp_path):
    write_layout(tmp_path / "multi", LAYERS, arches=("arm64", "amd64"))
    import_path(tmp_path / "multi", "multi:1")
    img = lookup("multi:1")
    assert img.index_digest and img.config_blob["architecture"] == "amd64"
    write_layout(tmp_path / "arm", LAYERS, arches=("arm64",), how=None)
    with pytest.raises(ManifestError, match="arm64"):
        import_path(tmp_path / "arm", "arm:1")
    assert lookup("arm:1") is None


def test_corrupt_layout_blob_leaves_nothing(store, tmp_path):
    write_layout(tmp_path / "bad", LAYERS)
    blobs = sorted((tmp_path / "bad/blobs/sha256").iterdir(), key=lambda p: p.stat().st_size)
    victim = blobs[-1]
    victim.write_bytes(victim.read_bytes()[:-3] + b"xyz")
    with pytest.raises(DigestMismatch):
        import_path(tmp_path / "bad", "bad:1")
    assert lookup("bad:1") is None
    assert not (store.root / "blobs/sha256" / victim.name).exists()


@pytest.mark.parametrize("fmt, magic_at, magic", [("ext4", 1080, b"\x53\xef"), ("erofs", 1024, b"\xe2\xe1\xf5\xe0")])
def test_rootfs_formats(store, tmp_path, fmt, magic_at, magic):
    write_layout(tmp_path / "lay", LAYERS, how="zstd")
    import_path(tmp_path / "lay", "fs:1")
    img = lookup("fs:1")
    path = build(store, img.digest, img.layer_pairs(), fmt)
    with open(path, "rb") as fh:
        fh.seek(magic_at)
        assert fh.read(len(magic)) == magic
    assert path.name == f"{img.digest[7:]}.{fmt}"
    assert build(store, img.digest, img.layer_pairs(), fmt) == path
    assert not list((store.root / "tmp").iterdir())


def test_unsafe_image_leaves_no_rootfs(store, tmp_path):
    write_layout(tmp_path / "evil", [tar_bytes([("symlink", "x", "../../../.."), ("file", "x/pwned", "!")])])
    import_path(tmp_path / "evil", "evil:1")
    img = lookup("evil:1")
    with pytest.raises(Exception, match="outside the root"):
        img.rootfs_path
    assert not img.rootfs_file().exists() and not list((store.root / "tmp").iterdir())


def test_default_image_and_resolve(store):
    img = resolve()
    assert img.name == "docker.io/mm/default:latest" and img.config["Cmd"][0] == "echo"
    assert build_default()[2] is False
    assert img.rootfs_path.exists()
    with pytest.raises(ImageNotFound):
        resolve("nothere:1", pull=False)


def test_writable_disk_is_sparse(tmp_path):
    path = create_writable_disk(tmp_path / "rw.ext4", "256M", tmp_path / "templates")
    st = os.stat(path)
    assert st.st_size == 256 << 20 and st.st_blocks * 512 < 32 << 20


def test_cli_ls_inspect_rm_prune(store, tmp_path, capsys):
    write_layout(tmp_path / "lay", LAYERS)
    assert main(["image", "import", str(tmp_path / "lay"), "cli:1"]) == 0
    capsys.readouterr()
    assert main(["image", "ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["cli:1"]
    assert main(["image", "inspect", "cli:1", "--json", "--rootfs"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["digest"] == rows[0]["digest"] and len(data["layers"]) == 2
    assert os.path.exists(data["rootfs"]) and data["config"]["os"] == "linux"
    assert main(["image", "rm", "cli:1", "--json"]) == 0
    removed = json.loads(capsys.readouterr().out)
    assert removed["blobs"] == 4 and removed["rootfs"] == 1
    assert main(["image", "inspect", "cli:1"]) == 1
    assert "hint:" in capsys.readouterr().err
    assert main(["image", "prune", "--json"]) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="device nodes need root")
def test_rootfs_keeps_links_nodes_xattrs(store, tmp_path):
    import subprocess

    layer = tar_bytes([("dir", "d"), ("file", "d/a", "x", 0o644, {"user.k": "v"}), ("hardlink", "d/b", "d/a"),
                       ("chr", "d/null", 1, 3), ("symlink", "d/s", "a")])
    write_layout(tmp_path / "lay", [layer])
    import_path(tmp_path / "lay", "meta:1")
    img = lookup("meta:1")
    ext4 = build(store, img.digest, img.layer_pairs(), "ext4")

    def debugfs(cmd):
        return subprocess.run(["debugfs", "-R", cmd, str(ext4)], capture_output=True, text=True).stdout

    assert "Links: 2" in debugfs("stat /d/a") and 'user.k (1) = "v"' in debugfs("ea_list /d/a")
    assert "01:03" in debugfs("stat /d/null") and "Fast link dest: \"a\"" in debugfs("stat /d/s")
    erofs = build(store, img.digest, img.layer_pairs(), "erofs")
    dump = subprocess.run(["dump.erofs", "--path=/d/b", str(erofs)], capture_output=True, text=True).stdout
    assert "Links: 2" in dump


def test_writable_disks_copy_one_template_per_size(tmp_path):
    import subprocess

    templates = tmp_path / "templates"
    a = create_writable_disk(tmp_path / "a.ext4", "64M", templates)
    b = create_writable_disk(tmp_path / "b.ext4", "64M", templates)
    assert [p.name for p in templates.iterdir()] == [f"rw-ext4-{64 << 20}.img"]
    for disk in (a, b):
        st = os.stat(disk)
        assert st.st_size == 64 << 20 and st.st_blocks * 512 < 16 << 20  # holes stayed holes
        fsck = subprocess.run(["e2fsck", "-n", "-f", str(disk)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    label = subprocess.run(["e2label", str(a)], capture_output=True, text=True).stdout.strip()
    assert label == "mm-rw"
    assert a.read_bytes() == b.read_bytes() == (templates / f"rw-ext4-{64 << 20}.img").read_bytes()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_disk(tmp_path):
    import subprocess

    from vmm.image.errors import RootfsError

    templates = tmp_path / "templates"
    create_writable_disk(tmp_path / "warm.ext4", "64M", templates)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(RootfsError) as err:
            create_writable_disk(small / "rw.ext4", "64M", templates)
        assert "cannot create the writable disk" in err.value.message and err.value.hint
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_writable_disk_across_file_systems(tmp_path, monkeypatch):
    """copy_file_range refused between two file systems (EXDEV, as between the lab's 9p
    cache and its tmpfs state): the disk is copied by read and write, holes kept."""
    import errno as errno_

    from vmm.image import rootfs

    def refuse(*args):
        raise OSError(errno_.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(rootfs.os, "copy_file_range", refuse)
    disk = create_writable_disk(tmp_path / "x.ext4", "64M", tmp_path / "templates")
    assert disk.read_bytes() == (tmp_path / "templates" / f"rw-ext4-{64 << 20}.img").read_bytes()
    assert os.stat(disk).st_blocks * 512 < 16 << 20
