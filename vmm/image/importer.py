"""`mm image import`: oci-archive, docker-archive (`docker save`) and OCI layout directories.

Blobs are copied into the store through the same verifying path as pulls (sha256 and
size checked), nothing is extracted to disk first: archives are read member by member.
A docker-archive's `manifest.json` is turned into a Docker schema2 manifest whose
layer digests are computed from the archive's layer files.
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

from vmm.image import manifest as mf
from vmm.image.errors import ArchiveError
from vmm.image.images import record_name
from vmm.image.reference import parse
from vmm.image.store import CHUNK, Store

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


class _Source:
    """Files of a layout directory or of a tar archive, by relative path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if path.is_file():
            try:
                self.tar = tarfile.open(path, "r:*")
            except (tarfile.TarError, OSError) as exc:
                raise ArchiveError(f"{path} is not a tar archive: {exc}") from None
            self.members = {m.name.removeprefix("./"): m for m in self.tar.getmembers() if m.isfile()}
        elif not path.is_dir():
            raise ArchiveError(f"{path} does not exist", "give the path of an archive or an OCI layout directory")

    def exists(self, rel: str) -> bool:
        return rel in self.members if self.tar else (self.path / rel).is_file()

    def open(self, rel: str) -> BinaryIO:
        if self.tar:
            if rel not in self.members:
                raise ArchiveError(f"{self.path} lacks {rel}")
            return self.tar.extractfile(self.members[rel])
        if ".." in Path(rel).parts or rel.startswith("/") or not (self.path / rel).is_file():
            raise ArchiveError(f"{self.path} lacks {rel}")
        return open(self.path / rel, "rb")

    def read_json(self, rel: str) -> Any:
        with self.open(rel) as fh:
            try:
                return json.loads(fh.read())
            except ValueError as exc:
                raise ArchiveError(f"{rel} in {self.path} is not valid JSON: {exc}") from None

    def close(self) -> None:
        if self.tar:
            self.tar.close()


def import_path(path: Path | str, name: str | None = None, store: Store | None = None) -> tuple[str, str]:
    """Import the image at `path` as `name` (or the name the archive carries); returns (name, digest)."""
    store = store or Store()
    src = _Source(Path(path))
    try:
        with store.using():
            if src.exists("index.json"):
                return _import_oci(src, name, store)
            if src.exists("manifest.json"):
                return _import_docker(src, name, store)
            raise ArchiveError(f"{path} has neither index.json (OCI) nor manifest.json (docker save)")
    finally:
        src.close()


def _blob_rel(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    return f"blobs/{algo}/{hexd}"


def _copy(src: _Source, store: Store, desc: dict[str, Any]) -> None:
    mf.check_descriptor(desc)
    with src.open(_blob_rel(desc["digest"])) as fh:
        store.put_stream(desc["digest"], desc["size"], fh)


def _final_name(name: str | None, carried: str | None, path: Path) -> str:
    text = name or carried
    if not text:
        raise ArchiveError(f"{path} does not name its image", "give a name: mm image import PATH NAME")
    ref = parse(text)
    if ref.tag is None:
        ref = parse(f"{text.split('@')[0]}:latest")
    return record_name(ref)


def _pick_oci(index: dict[str, Any], name: str | None, path: Path) -> dict[str, Any]:
    entries = index.get("manifests") or []
    if not entries:
        raise ArchiveError(f"{path}: index.json lists no images")
    if len(entries) == 1:
        return entries[0]
    if name:
        tag = parse(name).tag
        for entry in entries:
            if (entry.get("annotations") or {}).get(REF_NAME) in (name, tag):
                return entry
    names = [(e.get("annotations") or {}).get(REF_NAME, e.get("digest")) for e in entries]
    raise ArchiveError(f"{path} holds several images ({', '.join(map(str, names))})",
                       "give the NAME (or tag) of the one to import")


def _import_oci(src: _Source, name: str | None, store: Store) -> tuple[str, str]:
    entry = _pick_oci(src.read_json("index.json"), name, src.path)
    mf.check_descriptor(entry)
    annotations = entry.get("annotations") or {}
    carried = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
    if carried and ":" not in carried and "/" not in carried:
        carried = None  # a bare tag is no image name
    index_digest = None
    _copy(src, store, entry)
    kind, doc = mf.load(store.read_blob(entry["digest"]), entry.get("mediaType"))
    if mf.is_index(kind):
        index_digest = entry["digest"]
        entry = mf.select_platform(doc)
        _copy(src, store, entry)
        kind, doc = mf.load(store.read_blob(entry["digest"]), entry.get("mediaType"))
    config, layers = mf.image_parts(doc)
    for desc in [config, *layers]:
        _copy(src, store, desc)
    mf.check_config(json.loads(store.read_blob(config["digest"])))
    final = _final_name(name, carried, src.path)
    store.set_ref(final, entry["digest"], index_digest, source=f"import:{src.path}")
    return final, entry["digest"]


def _hash_member(src: _Source, rel: str) -> tuple[str, int, bool]:
    hasher, size, head = hashlib.sha256(), 0, b""
    with src.open(rel) as fh:
        while chunk := fh.read(CHUNK):
            head = head or chunk[:2]
            hasher.update(chunk)
            size += len(chunk)
    return "sha256:" + hasher.hexdigest(), size, head == b"\x1f\x8b"


def _import_docker(src: _Source, name: str | None, store: Store) -> tuple[str, str]:
    entries = src.read_json("manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ArchiveError(f"{src.path}: manifest.json lists no images")
    entry = entries[0]
    if name and len(entries) > 1:
        wanted = record_name(parse(name))
        entry = next((e for e in entries if wanted in [record_name(parse(t)) for t in e.get("RepoTags") or []]), entry)
    try:
        config_rel, layer_rels = entry["Config"], list(entry["Layers"])
    except (KeyError, TypeError):
        raise ArchiveError(f"{src.path}: manifest.json entry lacks Config or Layers") from None
    with src.open(config_rel) as fh:
        config_bytes = fh.read()
    config_digest = store.put_bytes(config_bytes)
    mf.check_config(json.loads(config_bytes))
    layers = []
    for rel in layer_rels:
        digest, size, gz = _hash_member(src, rel)
        with src.open(rel) as fh:
            store.put_stream(digest, size, fh)
        layers.append({"mediaType": mf.DOCKER_LAYER_GZIP if gz else mf.DOCKER_LAYER, "digest": digest, "size": size})
    config_desc = {"mediaType": mf.DOCKER_CONFIG, "digest": config_digest, "size": len(config_bytes)}
    digest = store.put_bytes(mf.build_manifest(config_desc, layers, docker=True))
    tags = entry.get("RepoTags") or []
    final = _final_name(name, tags[0] if tags else None, src.path)
    store.set_ref(final, digest, None, source=f"import:{src.path}")
    return final, digest

