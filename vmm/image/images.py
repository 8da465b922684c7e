"""Local images: `Image` (what the rest of mm uses) and resolving a reference to one.

`resolve("alpine")` looks the name up in the store and pulls only when it is missing
(or never, with pull=False). The built-in default image is built on first use, so
`mm run` with no image works offline. Resolving a cached image reads two small files;
`Image.rootfs_path` builds the root filesystem on first use and is a stat afterwards.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from vmm.image import manifest as mf
from vmm.image.errors import ImageNotFound
from vmm.image.reference import Reference, parse
from vmm.image.store import Store
from vmm.plain import REQUIRED, Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Any

DEFAULT_IMAGE = "mm/default:latest"


# A vmm.plain.Frozen record, not a dataclass: `mm run`'s path imports no dataclasses (and so
# no inspect, ast, dis, tokenize), a second of start-up under the lab's emulation.
class Image(Frozen):
    """One local image: its name, manifest digest, OCI config and layers (the cached
    properties below fill in its __dict__ on first use, which Frozen allows)."""

    FIELDS = {"name": REQUIRED, "digest": REQUIRED, "manifest": REQUIRED,  # str, str, dict
              "store": REQUIRED, "index_digest": None}                     # Store, str | None

    @cached_property
    def config_blob(self) -> dict[str, Any]:
        """The whole OCI image config document (architecture, os, rootfs, history, config)."""
        config_desc, _ = mf.image_parts(self.manifest)
        return json.loads(self.store.read_blob(config_desc["digest"]))

    @property
    def config(self) -> dict[str, Any]:
        """The runtime config: Entrypoint, Cmd, Env, WorkingDir, User (absent keys absent)."""
        return self.config_blob.get("config") or {}

    @property
    def config_digest(self) -> str:
        return self.manifest["config"]["digest"]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("layers") or [])

    @property
    def size(self) -> int:
        return sum(layer["size"] for layer in self.layers)

    def layer_pairs(self) -> list[tuple[str, str | None]]:
        diff_ids = (self.config_blob.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(self.layers):
            diff_ids = [None] * len(self.layers)
        return [(layer["digest"], diff_id) for layer, diff_id in zip(self.layers, diff_ids)]

    def rootfs_file(self, fmt: str | None = None) -> Path:
        """Where the root filesystem image is (or will be), without building it."""
        from vmm.image.rootfs import default_format

        return self.store.rootfs_path(self.digest, fmt or default_format())

    @property
    def rootfs_path(self) -> Path:
        """The read-only root filesystem image, built on first use and cached."""
        path = self.rootfs_file()
        if path.exists():
            return path
        from vmm.image.rootfs import build

        return build(self.store, self.digest, self.layer_pairs())

    def to_dict(self) -> dict[str, Any]:
        rootfs = self.rootfs_file()
        return {
            "name": self.name, "digest": self.digest, "index_digest": self.index_digest,
            "config_digest": self.config_digest, "config": self.config_blob,
            "layers": self.layers, "size": self.size,
            "rootfs": str(rootfs), "rootfs_built": rootfs.exists(),
        }


def record_name(ref: Reference) -> str:
    return f"{ref.name}@{ref.digest}" if ref.digest and not ref.tag else f"{ref.name}:{ref.tag}"


def load(store: Store, name: str, digest: str, index_digest: str | None = None) -> Image:
    if not store.has_blob(digest):
        raise ImageNotFound(f"image {name} is recorded but its manifest {digest} is missing",
                            f"pull it again, or `mm image rm {name}`")
    _, doc = mf.load(store.read_blob(digest))
    return Image(name, digest, doc, store, index_digest)


def lookup(ref: str | Reference, store: Store | None = None) -> Image | None:
    """The local image for `ref`, or None. A bare digest or a digest prefix also works."""
    store = store or Store()
    if isinstance(ref, str) and (by_digest := _by_digest(ref, store)):
        return by_digest
    parsed = parse(ref) if isinstance(ref, str) else ref
    record = store.get_ref(record_name(parsed))
    if record is None and parsed.digest:
        for rec in store.refs():
            if parsed.digest in (rec["digest"], rec.get("index_digest")) and parse(rec["name"]).name == parsed.name:
                record = rec
                break
    if record is None:
        return None
    return load(store, record["name"], record["digest"], record.get("index_digest"))


def _by_digest(text: str, store: Store) -> Image | None:
    key = text.removeprefix("sha256:")
    if len(key) < 12 or not all(c in "0123456789abcdef" for c in key):
        return None
    for rec in store.refs():
        if rec["digest"][7:].startswith(key):
            return load(store, rec["name"], rec["digest"], rec.get("index_digest"))
    return None


def resolve(ref: str | None = None, pull: bool = True, store: Store | None = None, quiet: bool = True) -> Image:
    """The image for `ref` (default: the built-in image), pulling it when missing and allowed."""
    store = store or Store()
    ref = ref or DEFAULT_IMAGE
    image = lookup(ref, store)
    if image is not None:
        return image
    parsed = parse(ref)
    if parsed == parse(DEFAULT_IMAGE):
        from vmm.image.default import build_default

        build_default(store, rootfs=False)
        return lookup(DEFAULT_IMAGE, store)
    if not pull:
        raise ImageNotFound(f"image {parsed.familiar()} is not in the local cache",
                            f"pull it with `mm image pull {parsed.familiar()}`")
    from vmm.image.pull import pull as do_pull

    do_pull(parsed, store, quiet=quiet)
    image = lookup(parsed, store)
    if image is None:
        raise ImageNotFound(f"image {parsed.familiar()} vanished right after being pulled")
    return image
