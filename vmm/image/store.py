"""The content-addressed image cache under `cache_dir()/images/`.

    blobs/sha256/<hex>      every blob once, shared by all images (manifests, configs, layers)
    refs/<key>.json         name → manifest digest (one small file per name)
    rootfs/<hex>.<format>   read-only root filesystem per manifest digest
    tmp/                    partial downloads (<hex>.partial, resumable) and staging dirs
    locks/                  flock files

Nothing appears under `blobs/`, `refs/` or `rootfs/` except by rename of a complete,
verified, fsynced temporary file, so a killed pull leaves only `tmp/` litter. Writers of
the same blob serialise on a per-blob flock; pulls hold `gc.lock` shared and garbage
collection holds it exclusive, so `prune` never deletes a blob a pull is about to use.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

from vmm import paths
from vmm.image.errors import DigestMismatch, ImageError, ImageNotFound
from vmm.sha256 import sha256

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Any, BinaryIO, Iterator

CHUNK = 1 << 20


def sha256_hex(digest: str) -> str:
    if not digest.startswith("sha256:") or len(digest) != 71:
        raise ImageError(f"unsupported digest {digest!r}", "only sha256 digests are supported")
    return digest[7:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: Path, final: Path) -> None:
    """fsync `tmp`, rename it over `final`, fsync the directory: all or nothing."""
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


class Store:
    """One image cache directory; cheap to construct (no I/O until used)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else paths.cache_dir() / "images"

    # -- layout -------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return paths.ensure(self.root / name)

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256_hex(digest)

    def partial_path(self, digest: str) -> Path:
        return self._dir("tmp") / f"{sha256_hex(digest)}.partial"

    def rootfs_path(self, digest: str, fmt: str) -> Path:
        return self.root / "rootfs" / f"{sha256_hex(digest)}.{fmt}"

    def tmp_dir(self, prefix: str) -> Path:
        """A fresh private (0700) directory under tmp/ for staging."""
        import tempfile

        return Path(tempfile.mkdtemp(prefix=prefix, dir=self._dir("tmp")))

    # -- locks --------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, shared: bool = False) -> Iterator[None]:
        fd = os.open(self._dir("locks") / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def using(self) -> contextlib.AbstractContextManager[None]:
        """Held (shared) by anything that adds to the store; excludes garbage collection."""
        return self.lock("gc", shared=True)

    # -- blobs --------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob(self, digest: str) -> bytes:
        try:
            return self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"blob {digest} is not in the cache") from None

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        """Store `data`; with `digest`, verify it first. Returns the digest."""
        import hashlib  # here, not at import: OpenSSL's start-up is no cached resolve's business

        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest and digest != actual:
            raise DigestMismatch(f"content of {digest} hashes to {actual}")
        if not self.has_blob(actual):
            with self.lock(sha256_hex(actual)):
                if not self.has_blob(actual):
                    self._write_new(actual, [data])
        return actual

    def put_stream(self, digest: str, size: int | None, src: BinaryIO) -> None:
        """Copy `src` into the store as `digest`, verifying size and sha256 on the way."""
        if self.has_blob(digest):
            return
        with self.lock(sha256_hex(digest)):
            if self.has_blob(digest):
                return
            tmp = self.partial_path(digest).with_suffix(".import")
            import hashlib

            hasher, total = hashlib.sha256(), 0
            with open(tmp, "wb") as out:
                while chunk := src.read(CHUNK):
                    hasher.update(chunk)
                    total += len(chunk)
                    out.write(chunk)
            self.finish_blob(tmp, digest, hasher.hexdigest(), total, size)

    def finish_blob(self, tmp: Path, digest: str, actual_hex: str, total: int, size: int | None) -> None:
        """Check a fully written temporary blob and move it into place (or delete it)."""
        if size is not None and total != size:
            tmp.unlink(missing_ok=True)
            raise DigestMismatch(f"blob {digest} is {total} bytes, expected {size}",
                                 "the download was truncated or the source is corrupt; nothing was stored")
        if actual_hex != sha256_hex(digest):
            tmp.unlink(missing_ok=True)
            raise DigestMismatch(f"blob {digest} has content sha256:{actual_hex}")
        final = self.blob_path(digest)
        paths.ensure(final.parent)
        commit_file(tmp, final)

    def _write_new(self, digest: str, chunks: list[bytes]) -> None:
        tmp = self.partial_path(digest).with_suffix(".new")
        with open(tmp, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        self.finish_blob(tmp, digest, sha256_hex(digest), tmp.stat().st_size, None)

    # -- references ---------------------------------------------------------------------
    def _ref_path(self, name: str) -> Path:
        return self.root / "refs" / (sha256(name.encode()).hexdigest()[:40] + ".json")

    def set_ref(self, name: str, digest: str, index_digest: str | None = None, source: str = "") -> None:
        """Point `name` at the manifest `digest` (whose blobs must all be stored already)."""
        record = {"name": name, "digest": digest, "index_digest": index_digest,
                  "source": source, "created": time.time()}
        path = self._ref_path(name)
        paths.ensure(path.parent)
        import tempfile

        fd, tmp_name = tempfile.mkstemp(prefix=".ref-", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(record, sort_keys=True))
        commit_file(Path(tmp_name), path)

    def get_ref(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._ref_path(name).read_text())
        except FileNotFoundError:
            return None

    def refs(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted((self.root / "refs").glob("*.json")):
            with contextlib.suppress(FileNotFoundError, ValueError):
                out.append(json.loads(path.read_text()))
        return sorted(out, key=lambda r: r["name"])

    def remove_ref(self, name: str) -> bool:
        try:
            self._ref_path(name).unlink()
            return True
        except FileNotFoundError:
            return False

    # -- garbage collection --------------------------------------------------------------
    def referenced(self) -> set[str]:
        """Digests reachable from some reference (index, manifest, config, layers)."""
        from vmm.image import manifest as mf

        keep: set[str] = set()
        for ref in self.refs():
            for digest in (ref.get("index_digest"), ref["digest"]):
                if digest:
                    keep.add(digest)
            with contextlib.suppress(ImageError):
                _, doc = mf.load(self.read_blob(ref["digest"]))
                config, layers = mf.image_parts(doc)
                keep.update(d["digest"] for d in [config, *layers])
        return keep

    def gc(self, partials: bool = True) -> dict[str, int]:
        """Delete unreferenced blobs and root filesystems (and stale tmp/ litter)."""
        removed = {"blobs": 0, "rootfs": 0, "tmp": 0, "bytes": 0}
        with self.lock("gc"):
            keep = {sha256_hex(d) for d in self.referenced()}
            for path in list((self.root / "blobs" / "sha256").glob("*")):
                if path.name not in keep:
                    removed["bytes"] += path.stat().st_size
                    path.unlink(missing_ok=True)
                    removed["blobs"] += 1
            for path in list((self.root / "rootfs").glob("*")):
                if path.name.split(".", 1)[0] not in keep:
                    removed["bytes"] += path.stat().st_size
                    path.unlink(missing_ok=True)
                    removed["rootfs"] += 1
            if partials:
                # Holding gc.lock exclusively means no pull or build is using tmp/ now.
                for path in list((self.root / "tmp").glob("*")) + list((self.root / "refs").glob(".ref-*")):
                    if path.is_dir():
                        import shutil

                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
                    removed["tmp"] += 1
        return removed
