"""`mm cp` with Docker's rules, through the guest agent's tar copy (COPY_IN / COPY_OUT).

    src, dest = parse_cp_args("vm1:/etc/hosts", ".")    # which side is the machine
    copy(control, src, dest, stdin=..., stdout=...)      # -> bytes of file data copied

Grammar (Docker's `splitCpArg`): an absolute local path, or one whose part before the
first `:` starts with `.`, is local; otherwise `NAME:PATH` names a machine path (relative
paths are relative to the guest's `/`); `-` alone is a tar stream on stdin (as SRC) or
stdout (as DEST). Exactly one side is a machine.

Where things land (Docker's table): a file copied onto an existing directory goes into it,
onto an existing file or a missing path it takes that name (a missing path ending in `/`
is an error); a directory copied onto an existing directory goes into it (its contents
only when SRC ends in `/.`), onto a missing path it becomes that directory, onto a file it
is an error. The agent extracts into a directory under the names in the archive, so the
host renames the top entry of the archive it writes (copy in) or reads (copy out), and
asks the guest what DEST is by opening a COPY_OUT of `DEST/.` and reading only the first
header. Ownership: files copied in belong to root, files copied out to the user running
mm, unless `archive` (Docker's `-a`) keeps the archive's uid/gid.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from vmm.errors import MMError, NotFound, UsageError
from vmm.guest.errors import AgentError

STDIO = "-"


class CopyError(MMError):
    """A copy that Docker's rules refuse (a directory onto a file, a missing parent)."""


@dataclass(frozen=True)
class CpArg:
    machine: str | None   # None: a host path (or "-")
    path: str

    @property
    def is_stdio(self) -> bool:
        return self.machine is None and self.path == STDIO

    def __str__(self) -> str:
        return f"{self.machine}:{self.path}" if self.machine else self.path


def parse_cp_arg(arg: str) -> CpArg:
    if not arg:
        raise UsageError("an empty path is not a copy source or destination", "give PATH or MACHINE:PATH")
    if arg.startswith("/"):
        return CpArg(None, arg)
    machine, sep, path = arg.partition(":")
    if not sep or machine.startswith("."):
        return CpArg(None, arg)
    if not machine:
        raise UsageError(f"{arg!r} names no machine before ':'", "use MACHINE:PATH, or ./PATH for a local path")
    if not path:
        raise UsageError(f"{arg!r} names no path after ':'", f"use {machine}:/PATH")
    return CpArg(machine, path if path.startswith("/") else "/" + path)


def parse_cp_args(src: str, dest: str) -> tuple[CpArg, CpArg]:
    s, d = parse_cp_arg(src), parse_cp_arg(dest)
    if s.machine and d.machine:
        raise UsageError("copying between two machines is not supported",
                         "copy to the host first, then into the other machine")
    if not s.machine and not d.machine:
        raise UsageError("one of SRC and DEST must be MACHINE:PATH",
                         "e.g. `mm cp ./file vm1:/tmp/` or `mm cp vm1:/etc/hosts .`; use ./PATH for local paths with ':'")
    return s, d


def _contents_only(path: str) -> bool:
    return path.endswith("/.") or path == "."


def _strip_dot(path: str) -> str:
    """`/a/b/.` -> `/a/b` (the directory whose contents are copied)."""
    while path.endswith("/.") and len(path) > 2:
        path = path[:-2]
    return path if path != "/." else "/"


# -- asking the guest what a path is ----------------------------------------------------

class _FirstHeader(Exception):
    pass


def guest_kind(agent, path: str) -> str:
    """'dir' (a directory, or a link to one), 'other' (exists, not a directory) or
    'missing', from the first header of a COPY_OUT of `path/.`."""
    import tarfile

    probe = path.rstrip("/") + "/." if path != "/" else "/."

    def first(stream: BinaryIO) -> None:
        tarfile.open(fileobj=stream, mode="r|").next()
        raise _FirstHeader

    try:
        agent.copy_out_archive(probe, first)
    except _FirstHeader:
        return "dir"
    except AgentError as exc:
        if "No such file or directory" in exc.message:
            return "missing"
        if "Not a directory" in exc.message:
            return "other"
        raise
    return "dir"


# -- copy in ----------------------------------------------------------------------------

def copy_in(agent, src: str | BinaryIO, dest: str, archive: bool = False) -> int:
    """Host path (or, for a binary stream, a tar archive) into guest path `dest`."""
    if not isinstance(src, str):
        if guest_kind(agent, dest) != "dir":
            raise CopyError(f"the destination {dest} must be an existing directory to extract a tar stream into")
        total = [0]

        def write(out: BinaryIO) -> None:
            while data := src.read(1 << 16):
                out.write(data)
                total[0] += len(data)

        agent.copy_in_archive(dest, write)
        return total[0]
    local = Path(src)
    if not os.path.lexists(local):
        raise NotFound(f"no such file or directory: {src}")
    is_dir = local.is_dir() and not local.is_symlink()
    if not is_dir and _contents_only(src):
        raise CopyError(f"{src} is not a directory")
    target_dir, name = _placement(dest, guest_kind(agent, dest), is_dir, _contents_only(src), src, agent)
    return _send_tree(agent, local, target_dir, name, archive)


def _placement(dest: str, kind: str, src_is_dir: bool, contents: bool, src: str, agent) -> tuple[str, str]:
    """(guest directory to extract into, top name in the archive; "." = contents)."""
    base = posixpath.basename(_strip_dot(src.rstrip("/")) if src not in ("/", ".") else "") or "."
    if kind == "dir":
        return dest, "." if contents else base
    if kind == "other":
        if src_is_dir:
            raise CopyError(f"cannot copy the directory {src} onto the file {dest}")
        parent = posixpath.dirname(dest.rstrip("/")) or "/"
        return parent, posixpath.basename(dest.rstrip("/"))
    if dest.endswith("/") and not src_is_dir:
        raise CopyError(f"the destination directory {dest} does not exist")
    parent = posixpath.dirname(dest.rstrip("/")) or "/"
    if guest_kind(agent, parent) != "dir":
        raise CopyError(f"cannot create {dest}: its parent directory {parent} does not exist in the guest")
    return parent, posixpath.basename(dest.rstrip("/"))


def _send_tree(agent, local: Path, target_dir: str, name: str, archive: bool) -> int:
    import tarfile

    sizes = [0]

    def owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
        if not archive:
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
        if info.isfile():
            sizes[0] += info.size
        return info

    def write(out: BinaryIO) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(str(local), arcname=name, filter=owner)

    try:
        agent.copy_in_archive(target_dir, write)
    except PermissionError as exc:
        raise CopyError(f"cannot read {exc.filename}: permission denied") from None
    return sizes[0]


# -- copy out ---------------------------------------------------------------------------

def copy_out(agent, src: str, dest: str | BinaryIO, archive: bool = False) -> int:
    """Guest path `src` to a host path (or, for a binary stream, as a tar archive)."""
    if not isinstance(dest, str):
        total = [0]

        def read(stream: BinaryIO) -> None:
            while data := stream.read(1 << 16):
                dest.write(data)
                total[0] += len(data)
            dest.flush()

        agent.copy_out_archive(src, read)
        return total[0]
    local = Path(dest)
    exists, is_dir = os.path.lexists(local), local.is_dir()
    if not exists:
        if dest.endswith("/"):
            contents = _contents_only(src)
            if not contents and guest_kind(agent, _strip_dot(src)) != "dir":
                raise CopyError(f"the destination directory {dest} does not exist")
        if not local.absolute().parent.is_dir():
            raise CopyError(f"cannot create {dest}: its parent directory does not exist")
    extractor = _Extractor(src, local, exists, is_dir, archive)
    agent.copy_out_archive(src, extractor.run)
    return extractor.size


class _Extractor:
    """Extracts the guest's archive of `src` under Docker's naming rules, checking every
    member (the guest is untrusted) before anything is written."""

    def __init__(self, src: str, dest: Path, exists: bool, is_dir: bool, archive: bool) -> None:
        self.src, self.dest, self.exists, self.is_dir, self.archive = src, dest, exists, is_dir, archive
        self.size = 0
        self.root: Path | None = None
        # the agent archives src under its base name ("." for / and paths ending in /.)
        self.expected = posixpath.basename(src.rstrip("/")) if not _contents_only(src) and src.strip("/") else "."

    def run(self, stream: BinaryIO) -> None:
        import tarfile

        from vmm.guest.agent_client import check_member, extract_member

        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                top = None
                for member in tar:
                    check_member(member, self.src)
                    if top is None:
                        top = self._top(member)
                    if not self._rename(member, top):
                        continue
                    check_member(member, self.src)
                    if not self.archive:
                        member.uid, member.gid = os.getuid(), os.getgid()
                    self.size += member.size if member.isfile() else 0
                    extract_member(tar, member, str(self.root), self.src, numeric_owner=True)
        except tarfile.TarError as exc:
            raise AgentError(f"copy out of {self.src}: bad archive from the guest: {exc}") from exc

    def _top(self, member) -> tuple[str, str]:
        """(the archive's top name, what it becomes); decides where the copy lands."""
        first = member.name.rstrip("/").split("/", 1)[0]
        if first != self.expected:
            raise AgentError(f"copy out of {self.src}: the guest's archive starts with {member.name!r}, "
                             f"not {self.expected!r}", "the guest's agent is not behaving; do not trust this machine")
        src_is_dir = member.isdir()
        if self.exists and not self.is_dir:
            if src_is_dir:
                raise CopyError(f"cannot copy the directory {self.src} onto the file {self.dest}")
            self.root = self.dest.absolute().parent
            return first, self.dest.name
        if self.exists:
            self.root = self.dest
            return first, "." if _contents_only(self.src) and src_is_dir else first
        if src_is_dir:
            self.dest.mkdir()
            self.root = self.dest
            return first, "."
        self.root = self.dest.absolute().parent
        return first, self.dest.name

    @staticmethod
    def _rename(member, top: tuple[str, str]) -> bool:
        """Replaces the top component; False for the top directory itself when only its
        contents are copied (it exists already)."""
        old, new = top
        name = member.name.rstrip("/")
        rest = name[len(old):].lstrip("/") if name == old or name.startswith(old + "/") else None
        if rest is None:
            raise AgentError(f"the guest's archive holds {member.name!r} outside {old!r}")
        if new == ".":
            if not rest:
                return False
            member.name = rest
        else:
            member.name = f"{new}/{rest}" if rest else new
        return True


# -- both ways ---------------------------------------------------------------------------

def copy(control, src: CpArg, dest: CpArg, *, stdin: BinaryIO | None = None,
         stdout: BinaryIO | None = None, archive: bool = False) -> int:
    """Performs `mm cp SRC DEST`; the number of bytes of file data (or tar stream) copied."""
    from vmm.machines.exec import guest_agent

    if dest.machine:
        _, agent = guest_agent(control, dest.machine)
        return copy_in(agent, stdin if src.is_stdio else src.path, dest.path, archive)
    _, agent = guest_agent(control, src.machine)
    return copy_out(agent, src.path, stdout if dest.is_stdio else dest.path, archive)
