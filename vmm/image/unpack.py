"""Unpacking layers into a private staging directory, safely, the way the guest will see them.

Layers apply in order: gzip, zstd or plain tar (sniffed by magic, not trusted from the
media type). Whiteouts (`.wh.NAME`) delete what lower layers put there; an opaque marker
(`.wh..wh..opq`) empties a directory of lower-layer entries. Hard links, symlinks,
device nodes, FIFOs, modes, ownership, mtimes and xattrs (PAX `SCHILY.xattr.*`) are kept.

Safety: entry names and hard-link targets that are absolute or contain `..` are refused.
Every parent directory is walked one component at a time from an fd on the root with
O_NOFOLLOW (openat-style); a symlink met on the way is resolved *inside* the root (an
absolute target means the root's own path, as in the guest) and refused when it climbs
above the root. The final component is never followed: an existing entry is removed and
the new one created with O_EXCL / dir_fd calls. So nothing is ever written outside the
root, whatever the tarball says. Run as root so ownership and device nodes are real.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from vmm.image.errors import UnpackError, UnsafePathError

MAX_SYMLINK_HOPS = 40
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def open_layer(path: Path) -> BinaryIO:
    """The decompressed stream of a layer blob, by its magic bytes."""
    raw = open(path, "rb")
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic == ZSTD_MAGIC:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw


class _Hashing:
    """A read-only stream wrapper hashing what passes through (to check diff_ids)."""

    def __init__(self, src: BinaryIO) -> None:
        self.src, self.hash = src, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.hash.update(data)
        return data

    def drain(self) -> str:
        while self.read(1 << 20):
            pass
        return "sha256:" + self.hash.hexdigest()


def split_name(name: str, what: str = "entry") -> list[str]:
    """Archive path → components; refuses absolute paths and `..`."""
    if name.startswith("/"):
        raise UnsafePathError(f"layer {what} {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"layer {what} {name!r} climbs out with '..'")
    return parts


class Unpacker:
    """Applies layers onto `root` (an existing private directory)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self._created: set[str] = set()
        self._dir_times: list[tuple[list[str], float]] = []

    def close(self) -> None:
        os.close(self.root_fd)

    def __enter__(self) -> "Unpacker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- layers -------------------------------------------------------------------------
    def apply(self, blob: Path, label: str, diff_id: str | None = None) -> None:
        """Apply one layer blob; `diff_id` (sha256 of the uncompressed tar) is checked if given."""
        self._created, self._dir_times = set(), []
        try:
            stream = _Hashing(open_layer(blob))
            try:
                with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tar:
                    for member in tar:
                        self._entry(tar, member)
                actual = stream.drain()
            finally:
                stream.src.close()
        except UnpackError as exc:
            exc.message = f"layer {label}: {exc.message}"
            raise
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise UnpackError(f"layer {label} is truncated or corrupt: {exc}",
                              "the image is broken; pull or import it again from a good source") from None
        except Exception as exc:
            if type(exc).__name__ == "ZstdError":
                raise UnpackError(f"layer {label} is truncated or corrupt: {exc}") from None
            raise
        if diff_id and actual != diff_id:
            raise UnpackError(f"layer {label} unpacks to {actual}, but the config says {diff_id}",
                              "the image config and its layers do not match")
        self._restore_dir_times()

    def _entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = split_name(m.name)
        if not parts:
            return  # the root itself: keep the staging directory's own attributes
        name = parts[-1]
        if name == OPAQUE:
            self._opaque(parts[:-1])
            return
        if name.startswith(WHITEOUT):
            self._whiteout(parts[:-1] + [name[len(WHITEOUT):]])
            return
        dfd = self._open_dir(parts[:-1], create=True)
        try:
            self._remove_existing(dfd, name, keep_dir=m.isdir())
            if m.isdir():
                self._make_dir(dfd, name, m, parts)
            elif m.isreg():
                self._make_file(dfd, name, m, tar)
            elif m.issym():
                os.symlink(m.linkname, name, dir_fd=dfd)
                self._finish_nofollow(dfd, name, m)
            elif m.islnk():
                self._make_hardlink(dfd, name, m)
            elif m.ischr() or m.isblk() or m.isfifo():
                self._make_node(dfd, name, m)
            else:
                return  # tar-internal types (long names, PAX) never reach here; sparse etc. are skipped
        except OSError as exc:
            raise UnpackError(f"cannot create {m.name!r}: {exc.strerror}") from None
        finally:
            os.close(dfd)
        for i in range(1, len(parts) + 1):
            self._created.add("/".join(parts[:i]))

    # -- walking the tree inside the root -------------------------------------------------
    def _open_dir(self, parts: list[str], create: bool) -> int:
        """An fd on directory `parts` inside the root, symlinks resolved inside the root."""
        todo, done, hops = list(parts), [], 0
        fd = os.dup(self.root_fd)
        try:
            while todo:
                comp = todo.pop(0)
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if not done:
                        raise UnsafePathError(f"a symlink in {'/'.join(parts)!r} points outside the root")
                    done.pop()
                    os.close(fd)
                    fd = self._reopen(done)
                    continue
                try:
                    nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise UnpackError(f"{'/'.join(done + [comp])!r} is not a directory") from None
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise UnpackError(f"too many symlinks resolving {'/'.join(parts)!r}") from None
                    target = os.readlink(comp, dir_fd=fd)
                    if target.startswith("/"):
                        done = []
                        os.close(fd)
                        fd = os.dup(self.root_fd)
                    todo = target.split("/") + todo
                    continue
                os.close(fd)
                fd, done = nfd, done + [comp]
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _reopen(self, done: list[str]) -> int:
        fd = os.dup(self.root_fd)
        for comp in done:
            nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd

    def _remove_existing(self, dfd: int, name: str, keep_dir: bool) -> None:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not keep_dir:
                shutil.rmtree(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)

    # -- whiteouts ------------------------------------------------------------------------
    def _whiteout(self, parts: list[str]) -> None:
        if "/".join(parts) in self._created or parts[-1] in ("", ".", ".."):
            return
        try:
            dfd = self._open_dir(parts[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            self._remove_existing(dfd, parts[-1], keep_dir=False)
        finally:
            os.close(dfd)

    def _opaque(self, parts: list[str]) -> None:
        dfd = self._open_dir(parts, create=True)
        prefix = "/".join(parts) + "/" if parts else ""
        try:
            for child in os.listdir(dfd):
                if prefix + child not in self._created:
                    self._remove_existing(dfd, child, keep_dir=False)
        finally:
            os.close(dfd)
        self._created.add("/".join(parts))

    # -- creating entries -----------------------------------------------------------------
    def _make_dir(self, dfd: int, name: str, m: tarfile.TarInfo, parts: list[str]) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
        except FileExistsError:
            pass
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            self._finish_fd(fd, m)
        finally:
            os.close(fd)
        self._dir_times.append((parts, m.mtime))

    def _make_file(self, dfd: int, name: str, m: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        try:
            src = tar.extractfile(m)
            with os.fdopen(os.dup(fd), "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            self._finish_fd(fd, m)
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)

    def _make_hardlink(self, dfd: int, name: str, m: tarfile.TarInfo) -> None:
        target = split_name(m.linkname, "hard link target")
        if not target:
            raise UnsafePathError(f"hard link {m.name!r} points at the root")
        try:
            tfd = self._open_dir(target[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            raise UnpackError(f"hard link {m.name!r} points at missing {m.linkname!r}") from None
        try:
            st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise UnsafePathError(f"hard link {m.name!r} points at a directory")
            os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            raise UnpackError(f"hard link {m.name!r} points at missing {m.linkname!r}") from None
        finally:
            os.close(tfd)

    def _make_node(self, dfd: int, name: str, m: tarfile.TarInfo) -> None:
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK if m.isblk() else stat.S_IFIFO
        os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=dfd)
        os.chown(name, m.uid, m.gid, dir_fd=dfd, follow_symlinks=False)
        # Just created by us as a non-symlink in a private tree: following is harmless.
        os.chmod(name, stat.S_IMODE(m.mode), dir_fd=dfd)
        os.utime(name, (m.mtime, m.mtime), dir_fd=dfd, follow_symlinks=False)

    def _finish_fd(self, fd: int, m: tarfile.TarInfo) -> None:
        os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, stat.S_IMODE(m.mode))  # after chown, which clears set-id bits
        for key, value in m.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                self._setxattr(fd, key[len("SCHILY.xattr."):], value, m.name)

    def _finish_nofollow(self, dfd: int, name: str, m: tarfile.TarInfo) -> None:
        os.chown(name, m.uid, m.gid, dir_fd=dfd, follow_symlinks=False)
        os.utime(name, (m.mtime, m.mtime), dir_fd=dfd, follow_symlinks=False)

    @staticmethod
    def _setxattr(fd: int, key: str, value: str, entry: str) -> None:
        data = value.encode("utf-8", "surrogateescape")
        try:
            os.setxattr(fd, key, data)
        except OSError as exc:
            if key.startswith("security.selinux"):
                return  # labels of the build host mean nothing in the guest
            raise UnpackError(f"cannot set xattr {key} on {entry!r}: {exc.strerror}") from None

    def _restore_dir_times(self) -> None:
        # Children change a directory's mtime; set the archive's times once the layer is done.
        for parts, mtime in reversed(self._dir_times):
            try:
                fd = self._open_dir(parts, create=False)
            except OSError:
                continue
            try:
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)
