"""A writer for the kernel's initramfs format (cpio "newc"), enough for our archives.

The kernel unpacks every archive concatenated into the initrd in order, later entries
replacing earlier ones; we use that to append a small per-boot archive to a cached one.
"""
from __future__ import annotations

import io
import stat
from pathlib import Path

TRAILER = "TRAILER!!!"


class CpioWriter:
    """Appends newc entries to a binary stream; `close()` writes the trailer."""

    def __init__(self, stream: io.RawIOBase | io.BufferedIOBase) -> None:
        self._out = stream
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.strip("/") or "."
        fields = [
            self._ino, mode, 0, 0, nlink, 0, len(data),  # ino mode uid gid nlink mtime size
            0, 0, rdev[0], rdev[1],  # devmajor devminor rdevmajor rdevminor
            len(name) + 1, 0,  # namesize check
        ]
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._write_padded(header + name.encode() + b"\0")
        self._write_padded(data)

    def _write_padded(self, blob: bytes) -> None:
        self._out.write(blob)
        self._out.write(b"\0" * (-len(blob) % 4))

    def mkdir(self, name: str, mode: int = 0o755) -> None:
        """A directory, and its parents when not written yet."""
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            if path and path not in self._dirs:
                self._dirs.add(path)
                self._entry(path, stat.S_IFDIR | mode, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        parent = name.strip("/").rpartition("/")[0]
        if parent:
            self.mkdir(parent)
        self._entry(name, stat.S_IFREG | mode, data)

    def add_path(self, name: str, source: Path, mode: int | None = None) -> None:
        """A regular file copied from the host (its permission bits unless `mode`)."""
        st = source.stat()
        self.file(name, source.read_bytes(), stat.S_IMODE(st.st_mode) if mode is None else mode)

    def symlink(self, name: str, target: str) -> None:
        parent = name.strip("/").rpartition("/")[0]
        if parent:
            self.mkdir(parent)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        parent = name.strip("/").rpartition("/")[0]
        if parent:
            self.mkdir(parent)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def close(self) -> None:
        self._entry(TRAILER, 0)


def read_names(blob: bytes) -> list[tuple[str, int, bytes]]:
    """(name, mode, data) of every entry in a newc archive or a concatenation of them."""
    out: list[tuple[str, int, bytes]] = []
    pos = 0
    while pos + 110 <= len(blob):
        if blob[pos:pos + 6] != b"070701":
            if blob[pos:pos + 4] == b"\0\0\0\0":  # padding between concatenated archives
                pos += 4
                continue
            raise ValueError(f"not a newc cpio entry at offset {pos}")
        fields = [int(blob[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = blob[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = blob[data_start:data_start + size]
        pos = data_start + size + (-size % 4)
        if name != TRAILER:
            out.append((name, mode, data))
    return out
