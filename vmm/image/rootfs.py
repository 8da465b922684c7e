"""Root filesystem images: one read-only image per manifest digest, and per-VM writable disks.

Format choice: **ext4** by default (no journal, read-only in use), erofs on request
(MM_ROOTFS_FORMAT=erofs). Measured on this machine (2 shared cores):

    tree (staged)                 mkfs.erofs          mke2fs -d (ext4, no journal)
    1,500 files, 54 MiB           0.20 s, 50 MiB      0.53 s, 53 MiB used / 80 MiB file
    400 files, 100 MiB (bench)    0.11-0.29 s, 100 MiB 0.39-0.41 s, 100 MiB used / 136 MiB file
    Debian minbase, 8,700 entries 0.64 s              1.19 s

and in a guest (benchmarks/image/rootfs_read.py: our VMM in the lab, 3 rounds
alternating, 2,460 entries / 105 MiB read cold through virtio-blk):

    metadata walk (find | wc -l)  erofs 9.4 s         ext4 0.76 s   (12x)
    read every byte (tar c .)     erofs 46 s          ext4 53 s     (noise-level)

erofs builds 2-3x faster and smaller, but the guest walks its metadata an order of
magnitude slower: erofs reads inodes and directories one 4 KiB block at a time,
synchronously, while ext4 reads ahead in its inode tables, so every lookup is a
virtio-blk round trip. A rootfs is built once per image digest and read on every boot
and by every `import` or `stat` a workload does, so the guest's side wins. ext4 is
sized up front (slack and inode tables, see make_fs); the guest mounts it read-only
under its overlay.
Either file is built in tmp/, fsynced and renamed into `rootfs/`, under a per-digest
lock, so concurrent builders wait for one build.

The per-VM writable layer is a sparse ext4 file (`create_writable_disk`): blocks are
allocated only as the guest writes.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from vmm.image.errors import RootfsError
from vmm.image.store import Store, commit_file, sha256_hex

FORMATS = ("erofs", "ext4")
DEFAULT_FORMAT = "ext4"


def default_format() -> str:
    fmt = os.environ.get("MM_ROOTFS_FORMAT", DEFAULT_FORMAT)
    if fmt not in FORMATS:
        raise RootfsError(f"MM_ROOTFS_FORMAT={fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


def _run(cmd: list[str], what: str) -> None:
    import shutil
    import subprocess

    tool = shutil.which(cmd[0])
    if not tool:
        package = {"mkfs.erofs": "erofs-utils"}.get(cmd[0], "e2fsprogs")
        raise RootfsError(f"{cmd[0]} is not installed", f"install the Debian package {package} (./setup.sh does)")
    proc = subprocess.run([tool, *cmd[1:]], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RootfsError(f"{what} failed ({cmd[0]} exit {proc.returncode}): {proc.stderr.strip()[-400:]}")


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes allocated, number of entries) of a staged tree, not following symlinks."""
    total, count = 0, 1
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += max(st.st_blocks * 512, 4096)
            count += 1
    return total, count


def make_fs(tree: Path, out: Path, fmt: str) -> None:
    """Write a filesystem image of `tree` to `out` (which must not exist)."""
    if fmt == "erofs":
        # Extended inodes keep every file's own mtime (compact ones store only the build time),
        # which tools such as Python's .pyc checks rely on.
        _run(["mkfs.erofs", "--quiet", "--preserve-mtime", str(out), str(tree)], "mkfs.erofs")
        return
    used, entries = tree_usage(tree)
    # Data + 256 B inodes + directory/extent overhead; ext4 cannot grow here, so be generous.
    size = int(used * 1.2) + entries * 512 + (16 << 20)
    with open(out, "wb") as fh:
        fh.truncate(size)
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-N", str(entries + 1024),
          "-O", "^has_journal,^resize_inode", "-E", "lazy_itable_init=0,nodiscard",
          "-d", str(tree), str(out)], "mke2fs")


def build(store: Store, digest: str, layers: list[tuple[str, str | None]], fmt: str | None = None) -> Path:
    """The root filesystem of manifest `digest` with `layers` [(blob digest, diff_id)], cached."""
    import shutil

    from vmm.image.unpack import Unpacker

    fmt = fmt or default_format()
    final = store.rootfs_path(digest, fmt)
    if final.exists():
        return final
    with store.using(), store.lock("rootfs-" + sha256_hex(digest)):
        if final.exists():
            return final
        staging = store.tmp_dir("rootfs-")
        try:
            tree = staging / "root"
            tree.mkdir(mode=0o700)
            with Unpacker(tree) as unpacker:
                for index, (blob, diff_id) in enumerate(layers):
                    unpacker.apply(store.blob_path(blob), f"{index + 1}/{len(layers)} ({blob[7:19]})", diff_id)
            os.chmod(tree, 0o755)
            image = staging / f"image.{fmt}"
            make_fs(tree, image, fmt)
            final.parent.mkdir(parents=True, exist_ok=True)
            commit_file(image, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like `512M`, `2G`, `1048576`."""
    if isinstance(size, int):
        return size
    text = size.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise RootfsError(f"bad disk size {size!r}", "use bytes or a number with K, M, G or T") from None


def create_writable_disk(path: Path | str, size: int | str, templates: Path | None = None) -> Path:
    """Create a sparse, empty ext4 disk at `path` (the VM's overlay upper layer).

    The file system is made once per size by mke2fs into `templates` (default: the state
    directory's templates/) and copied extent by extent after that: a fork and exec of
    mke2fs costs ~0.5 s of every `mm run` under the lab's emulation, the copy of its few
    MiB of metadata a few ms. Every disk gets the same file system UUID, which nothing
    in a guest relies on (init finds the disk by its label, mm-rw)."""
    path = Path(path)
    nbytes = parse_size(size)
    if nbytes < 8 << 20:
        raise RootfsError(f"writable disk of {nbytes} bytes is too small", "use at least 8M")
    tmp = path.with_name(path.name + ".tmp")
    try:
        sparse_copy(_empty_ext4(nbytes, templates), tmp)
        commit_file(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RootfsError(f"cannot create the writable disk {path}: {exc.strerror or exc}",
                          f"free space where {path.parent} lives, or give a smaller --disk-size") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _empty_ext4(nbytes: int, templates: Path | None) -> Path:
    """The cached empty ext4 file system of `nbytes`, made on first use (atomically: a
    concurrent maker's rename wins, both files being the same)."""
    from vmm import paths

    directory = Path(templates) if templates else paths.state_dir() / "templates"
    final = directory / f"rw-ext4-{nbytes}.img"
    if final.exists():
        return final
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{final.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.truncate(nbytes)
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-m", "0", "-L", "mm-rw",
              "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", str(tmp)], "mke2fs (writable disk)")
        commit_file(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy `src` to a new file `dst` of the same size, writing only its data extents
    (SEEK_DATA/SEEK_HOLE), so holes stay holes. A full disk raises OSError (ENOSPC)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        fout.truncate(size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            _copy_range(fin.fileno(), fout.fileno(), start, end, src)
            offset = end


def _copy_range(fin: int, fout: int, start: int, end: int, src: Path) -> None:
    """Bytes [start, end) of fin to the same offsets of fout: copy_file_range, or read and
    write where the kernel will not copy between these two file systems (EXDEV between a
    9p cache and a tmpfs state directory in the lab)."""
    pos = start
    while pos < end:
        try:
            n = os.copy_file_range(fin, fout, end - pos, pos, pos)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            data = os.pread(fin, min(end - pos, 1 << 20), pos)
            n = len(data) and os.pwrite(fout, data, pos)
        if n == 0:
            raise RootfsError(f"{src} shrank while it was copied", "remove it; it is made again")
        pos += n
