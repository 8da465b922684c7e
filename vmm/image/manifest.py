"""Manifests and indexes: Docker schema2 and OCI, manifest lists resolved to linux/amd64.

Only parsing and choosing live here; fetching is the registry client's job and storing
the store's. Descriptors are plain dicts as the specs define them.
"""
from __future__ import annotations

import json

from vmm.image.errors import ManifestError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
LAYER_TYPES = (OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER, DOCKER_LAYER_GZIP,
               "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")

PLATFORM_OS = "linux"
PLATFORM_ARCH = "amd64"


def load(data: bytes, media_type: str | None = None) -> tuple[str, dict[str, Any]]:
    """Decode a manifest or index; returns (media type, document)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    kind = doc.get("mediaType") or media_type or ""
    if kind in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise ManifestError("Docker schema 1 manifests are not supported",
                            "schema 1 is deprecated; push the image again with a current tool")
    if not kind:
        # OCI allows leaving mediaType out: tell an index from a manifest by its fields.
        kind = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if kind not in INDEX_TYPES + MANIFEST_TYPES:
        raise ManifestError(f"unsupported manifest type {kind!r}")
    return kind, doc


def is_index(kind: str) -> bool:
    return kind in INDEX_TYPES


def select_platform(index: dict[str, Any]) -> dict[str, Any]:
    """The descriptor of the linux/amd64 image in an index (OCI or Docker list)."""
    found = []
    for desc in index.get("manifests") or []:
        plat = desc.get("platform") or {}
        found.append(f"{plat.get('os', '?')}/{plat.get('architecture', '?')}")
        if plat.get("os") == PLATFORM_OS and plat.get("architecture") == PLATFORM_ARCH:
            check_descriptor(desc)
            return desc
    raise ManifestError(f"the index has no {PLATFORM_OS}/{PLATFORM_ARCH} image (it has: {', '.join(found) or 'none'})",
                        "micromachines runs linux/amd64 images only")


def check_descriptor(desc: Any) -> None:
    """A descriptor must name a sha256 digest and a non-negative size."""
    if not isinstance(desc, dict):
        raise ManifestError("descriptor is not an object")
    digest, size = desc.get("digest"), desc.get("size")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise ManifestError(f"unsupported or malformed digest {digest!r}", "only sha256 digests are supported")
    try:
        int(digest[7:], 16)
    except ValueError:
        raise ManifestError(f"malformed digest {digest!r}") from None
    if not isinstance(size, int) or size < 0:
        raise ManifestError(f"descriptor {digest} has a bad size {size!r}")


def image_parts(manifest: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(config descriptor, layer descriptors) of an image manifest, checked."""
    config = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ManifestError("manifest has no layer list")
    check_descriptor(config)
    for layer in layers:
        check_descriptor(layer)
        kind = layer.get("mediaType", OCI_LAYER)
        if kind not in LAYER_TYPES:
            raise ManifestError(f"unsupported layer type {kind!r}")
    return config, layers


def check_config(config: dict[str, Any]) -> None:
    """The image config must describe a linux/amd64 image."""
    os_, arch = config.get("os", PLATFORM_OS), config.get("architecture", PLATFORM_ARCH)
    if (os_, arch) != (PLATFORM_OS, PLATFORM_ARCH):
        raise ManifestError(f"the image is {os_}/{arch}, not {PLATFORM_OS}/{PLATFORM_ARCH}",
                            "micromachines runs linux/amd64 images only")


def build_manifest(config: dict[str, Any], layers: list[dict[str, Any]], docker: bool = False) -> bytes:
    """Serialize an image manifest (OCI, or Docker schema2) from descriptors."""
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": config,
        "layers": layers,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
