"""`mm cp`'s Docker rules (vmm/machines/copy.py) against the real agent: mm-init's agent
on a Unix socket on this host, so "guest" paths are host paths under tmp_path. Where a
file or directory lands, what is refused, ownership, tar streams, and a hostile archive."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from vmm.errors import NotFound
from vmm.guest.errors import AgentError
from vmm.machines.copy import CopyError, copy_in, copy_out, guest_kind


@pytest.fixture
def tree(tmp_path):
    """host/ (files to copy in, empty out/) and guest/ (what the agent serves)."""
    host, guest = tmp_path / "host", tmp_path / "guest"
    (host / "d" / "sub").mkdir(parents=True)
    (host / "d" / "a.txt").write_text("A")
    (host / "d" / "sub" / "b.txt").write_text("B")
    (host / "f.txt").write_text("F")
    (host / "out").mkdir()
    (guest / "dir" / "inner").mkdir(parents=True)
    (guest / "dir" / "x.txt").write_text("X")
    (guest / "dir" / "inner" / "y.txt").write_text("Y")
    (guest / "file.txt").write_text("G")
    (guest / "empty").mkdir()
    return host, guest


def test_guest_kind(agent, tree):
    _, guest = tree
    os.symlink("dir", guest / "link")
    assert guest_kind(agent, str(guest / "dir")) == "dir"
    assert guest_kind(agent, str(guest / "link")) == "dir"      # a link to a directory counts
    assert guest_kind(agent, str(guest / "file.txt")) == "other"
    assert guest_kind(agent, str(guest / "nope")) == "missing"
    assert guest_kind(agent, "/") == "dir"


# -- into the guest ---------------------------------------------------------------------

def test_file_into_existing_dir(agent, tree):
    host, guest = tree
    assert copy_in(agent, str(host / "f.txt"), str(guest / "empty")) == 1
    assert (guest / "empty" / "f.txt").read_text() == "F"


def test_file_to_new_name_and_over_a_file(agent, tree):
    host, guest = tree
    copy_in(agent, str(host / "f.txt"), str(guest / "renamed.txt"))
    assert (guest / "renamed.txt").read_text() == "F"
    copy_in(agent, str(host / "f.txt"), str(guest / "file.txt"))
    assert (guest / "file.txt").read_text() == "F"


def test_dir_into_dir_contents_and_new_dir(agent, tree):
    host, guest = tree
    copy_in(agent, str(host / "d"), str(guest / "empty"))
    assert (guest / "empty" / "d" / "sub" / "b.txt").read_text() == "B"
    copy_in(agent, str(host / "d") + "/.", str(guest / "dir"))
    assert (guest / "dir" / "a.txt").read_text() == "A" and (guest / "dir" / "x.txt").exists()
    copy_in(agent, str(host / "d"), str(guest / "fresh"))
    assert (guest / "fresh" / "a.txt").read_text() == "A" and not (guest / "fresh" / "d").exists()


@pytest.mark.parametrize("src, dest, message", [
    ("f.txt", "missing/", "destination directory .* does not exist"),
    ("d", "file.txt", "cannot copy the directory"),
    ("f.txt", "no/parent/f.txt", "parent directory .* does not exist"),
    ("f.txt/.", "empty", "is not a directory"),
])
def test_refused_copies_in_change_nothing(agent, tree, src, dest, message):
    host, guest = tree
    before = sorted(p.relative_to(guest) for p in guest.rglob("*"))
    with pytest.raises(CopyError, match=message):
        copy_in(agent, f"{host}/{src}", f"{guest}/{dest}")  # (a Path would drop a trailing /)
    assert sorted(p.relative_to(guest) for p in guest.rglob("*")) == before
    assert (guest / "file.txt").read_text() == "G"


def test_missing_host_source(agent, tree):
    _, guest = tree
    with pytest.raises(NotFound, match="no such file"):
        copy_in(agent, "/no/such/src", str(guest))


def test_ownership_in(agent, tree):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    host, guest = tree
    os.chown(host / "f.txt", 1234, 1234)
    copy_in(agent, str(host / "f.txt"), str(guest / "root-owned"))
    assert (guest / "root-owned").stat().st_uid == 0
    copy_in(agent, str(host / "f.txt"), str(guest / "kept"), archive=True)
    assert (guest / "kept").stat().st_uid == 1234


def test_tar_stream_in(agent, tree):
    _, guest = tree
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("streamed/hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    size = len(buf.getvalue())
    assert copy_in(agent, io.BytesIO(buf.getvalue()), str(guest / "empty")) == size
    assert (guest / "empty" / "streamed" / "hello.txt").read_bytes() == b"hello"
    with pytest.raises(CopyError, match="must be an existing directory"):
        copy_in(agent, io.BytesIO(buf.getvalue()), str(guest / "missing"))


# -- out of the guest -------------------------------------------------------------------

def test_file_out(agent, tree):
    host, guest = tree
    out = host / "out"
    assert copy_out(agent, str(guest / "file.txt"), str(out)) == 1
    assert (out / "file.txt").read_text() == "G"
    copy_out(agent, str(guest / "file.txt"), str(out / "other.txt"))
    assert (out / "other.txt").read_text() == "G"
    (out / "over.txt").write_text("old")
    copy_out(agent, str(guest / "file.txt"), str(out / "over.txt"))
    assert (out / "over.txt").read_text() == "G"


def test_dir_out(agent, tree):
    host, guest = tree
    out = host / "out"
    copy_out(agent, str(guest / "dir"), str(out))
    assert (out / "dir" / "inner" / "y.txt").read_text() == "Y"
    copy_out(agent, str(guest / "dir"), str(out / "new"))
    assert (out / "new" / "x.txt").read_text() == "X" and not (out / "new" / "dir").exists()
    (out / "contents").mkdir()
    copy_out(agent, str(guest / "dir") + "/.", str(out / "contents"))
    assert (out / "contents" / "inner" / "y.txt").read_text() == "Y"


def test_symlink_out_stays_a_link(agent, tree):
    host, guest = tree
    os.symlink("file.txt", guest / "ln")
    copy_out(agent, str(guest / "ln"), str(host / "out"))
    assert os.readlink(host / "out" / "ln") == "file.txt"


@pytest.mark.parametrize("src, dest, exc, message", [
    ("dir", "f.txt", CopyError, "cannot copy the directory"),
    ("file.txt", "out/missing/", CopyError, "destination directory .* does not exist"),
    ("file.txt", "out/no/parent.txt", CopyError, "parent directory does not exist"),
    ("nope", "out", AgentError, "No such file"),
])
def test_refused_copies_out(agent, tree, src, dest, exc, message):
    host, guest = tree
    with pytest.raises(exc, match=message):
        copy_out(agent, f"{guest}/{src}", f"{host}/{dest}")
    assert (host / "f.txt").read_text() == "F"
    assert sorted(os.listdir(host / "out")) == []


def test_ownership_out(agent, tree):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    host, guest = tree
    os.chown(guest / "file.txt", 1234, 1234)
    copy_out(agent, str(guest / "file.txt"), str(host / "out" / "mine"))
    assert (host / "out" / "mine").stat().st_uid == os.getuid()
    copy_out(agent, str(guest / "file.txt"), str(host / "out" / "kept"), archive=True)
    assert (host / "out" / "kept").stat().st_uid == 1234


def test_tar_stream_out(agent, tree):
    _, guest = tree
    buf = io.BytesIO()
    n = copy_out(agent, str(guest / "dir"), buf)
    assert n == len(buf.getvalue()) > 0
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        names = tar.getnames()
    assert "dir" in names and "dir/inner/y.txt" in names


# -- a hostile guest --------------------------------------------------------------------

class _FakeAgent:
    """Serves a crafted archive as the guest's COPY_OUT (what a compromised guest could send)."""

    def __init__(self, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data))
        self.archive = buf.getvalue()

    def copy_out_archive(self, src, read):
        read(io.BytesIO(self.archive))


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _dir(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, b""


def _hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info, b""


def _link(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, b""


@pytest.mark.parametrize("members, message", [
    ([_file("other.txt")], "starts with 'other.txt'"),            # not the name asked for
    ([_file("wanted"), _file("wanted/../../escape")], "unsafe path"),
    ([_file("wanted"), _file("/etc/evil")], "unsafe path"),
    ([_dir("wanted"), _link("wanted/l", "/tmp"), _file("wanted/l/escape")], "through a symbolic link"),
    ([_dir("wanted"), _link("wanted/l", "../.."), _file("wanted/l/escape")], "through a symbolic link"),
    ([_dir("wanted"), _link("wanted/l", "../.."), _hardlink("wanted/h", "wanted/l/escape")], "through a symbolic link"),
    ([_file("wanted"), _hardlink("wanted/h", "../escape")], "unsafe path"),
    ([_file("wanted"), _file("elsewhere/f")], "outside 'wanted'"),
])
def test_hostile_archives_write_nothing(tmp_path, members, message):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AgentError, match=message):
        copy_out(_FakeAgent(members), "/srv/wanted", str(out))
    assert not (tmp_path / "escape").exists() and not (out / "elsewhere").exists()
    assert not (out / "other.txt").exists()


@pytest.mark.parametrize("target", ["/etc", "../usr/lib/os-release"])
def test_a_symbolic_link_is_copied_as_a_link_whatever_it_points_to(tmp_path, target):
    # as docker cp: Debian's /etc/os-release is "../usr/lib/os-release"
    copy_out(_FakeAgent([_link("wanted", target)]), "/srv/wanted", str(tmp_path / "got"))
    assert os.readlink(tmp_path / "got") == target


def test_a_link_already_at_the_destination_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "out").mkdir()
    os.symlink(victim, tmp_path / "out" / "wanted")
    copy_out(_FakeAgent([_file("wanted", b"new")]), "/srv/wanted", str(tmp_path / "out"))
    assert victim.read_text() == "keep"
    assert (tmp_path / "out" / "wanted").read_bytes() == b"new" and not (tmp_path / "out" / "wanted").is_symlink()
