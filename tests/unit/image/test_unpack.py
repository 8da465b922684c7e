"""Unpacking layers: every entry kind, whiteouts, compressions, and refusal of escapes."""
import os
import stat

import pytest

from tests.unit.image.ocitools import compress, digest_of, tar_bytes
from vmm.image.errors import UnpackError, UnsafePathError
from vmm.image.unpack import Unpacker

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="ownership and device nodes need root")


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "root"
    path.mkdir()
    return path


def apply(tmp_path, root, *layers, how="gzip"):
    with Unpacker(root) as unpacker:
        for i, entries in enumerate(layers):
            raw = tar_bytes(entries)
            blob, _ = compress(raw, how)
            path = tmp_path / f"layer{i}"
            path.write_bytes(blob)
            unpacker.apply(path, str(i), digest_of(raw))


@pytest.mark.parametrize("how", ["gzip", "zstd", None])
def test_kinds_and_metadata(tmp_path, root, how):
    apply(tmp_path, root, [
        ("dir", "etc", 0o750), ("file", "etc/x", "hello", 0o4755, {"user.mm": "v1"}, (12, 34)),
        ("symlink", "etc/link", "x"), ("hardlink", "etc/hard", "etc/x"), ("fifo", "etc/fifo"),
        ("file", "./dotted", "d"),
    ], how=how)
    x = root / "etc/x"
    st = os.stat(x)
    assert x.read_text() == "hello" and stat.S_IMODE(st.st_mode) == 0o4755
    assert (st.st_uid, st.st_gid) == (12, 34)
    assert os.getxattr(x, "user.mm") == b"v1"
    assert os.readlink(root / "etc/link") == "x"
    assert os.stat(root / "etc/hard").st_ino == st.st_ino and st.st_nlink == 2
    assert stat.S_ISFIFO(os.lstat(root / "etc/fifo").st_mode)
    assert stat.S_IMODE(os.stat(root / "etc").st_mode) == 0o750
    assert os.stat(root / "etc").st_mtime == 1_600_000_000
    assert (root / "dotted").read_text() == "d"


@root_only
def test_device_nodes(tmp_path, root):
    apply(tmp_path, root, [("dir", "dev"), ("chr", "dev/null", 1, 3), ("blk", "dev/vda", 254, 0)])
    st = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert stat.S_ISBLK(os.lstat(root / "dev/vda").st_mode)


def test_whiteouts_and_opaque(tmp_path, root):
    apply(tmp_path, root,
          [("dir", "a"), ("file", "a/keep", "1"), ("file", "a/gone", "2"), ("dir", "o"), ("file", "o/old", "3"),
           ("dir", "d"), ("file", "d/f", "4"), ("file", "replaced", "file")],
          [("file", "a/.wh.gone", ""), ("file", "o/new", "5"), ("file", "o/.wh..wh..opq", ""),
           ("file", ".wh.d", ""), ("dir", "replaced"), ("file", ".wh.never-existed", "")])
    assert (root / "a/keep").exists() and not (root / "a/gone").exists()
    assert sorted(os.listdir(root / "o")) == ["new"]
    assert not (root / "d").exists() and (root / "replaced").is_dir()
    assert not any(name.startswith(".wh.") for _, dirs, files in os.walk(root) for name in dirs + files)


def test_file_replaces_symlink_without_following(tmp_path, root):
    outside = tmp_path / "outside"
    outside.write_text("precious")
    apply(tmp_path, root, [("symlink", "f", str(outside))], [("file", "f", "new")])
    assert outside.read_text() == "precious" and (root / "f").read_text() == "new"


def test_symlinked_parent_stays_inside(tmp_path, root):
    # An absolute symlink means the root's own path, as the guest sees it.
    apply(tmp_path, root, [("dir", "usr/bin"), ("symlink", "bin", "usr/bin"), ("symlink", "etc", "/realetc"),
                           ("file", "bin/tool", "t"), ("file", "etc/passwd", "p")])
    assert (root / "usr/bin/tool").read_text() == "t"
    assert (root / "realetc/passwd").read_text() == "p"


@pytest.mark.parametrize("entries, match", [
    ([("file", "../evil", "x")], "'..'"),
    ([("file", "/abs-evil", "x")], "absolute"),
    ([("file", "a/../../evil", "x")], "'..'"),
    ([("symlink", "esc", "../../.."), ("file", "esc/evil", "x")], "outside the root"),
    ([("dir", "d"), ("symlink", "d/up", "../.."), ("file", "d/up/evil", "x")], "outside the root"),
    ([("hardlink", "h", "../../etc/passwd")], "'..'"),
    ([("hardlink", "h", "/etc/passwd")], "absolute"),
])
def test_malicious_refused(tmp_path, root, entries, match):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UnsafePathError, match=match):
        apply(tmp_path, root, entries)
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == before + ["layer0"] or after == sorted(before + ["layer0"])
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path / "evil").exists()


def test_hardlink_through_symlink_stays_inside(tmp_path, root):
    apply(tmp_path, root, [("dir", "in"), ("file", "in/x", "x"), ("symlink", "ln", "/in"), ("hardlink", "h", "ln/x")])
    assert os.stat(root / "h").st_ino == os.stat(root / "in/x").st_ino


def test_truncated_and_mismatched(tmp_path, root):
    raw = tar_bytes([("file", "big", os.urandom(200_000))])
    blob, _ = compress(raw, "gzip")
    (tmp_path / "t").write_bytes(blob[: len(blob) // 2])
    with Unpacker(root) as unpacker, pytest.raises(UnpackError, match="truncated or corrupt"):
        unpacker.apply(tmp_path / "t", "t")
    (tmp_path / "m").write_bytes(blob)
    with Unpacker(root) as unpacker, pytest.raises(UnpackError, match="config says"):
        unpacker.apply(tmp_path / "m", "m", "sha256:" + "0" * 64)
