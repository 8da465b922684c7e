"""Errors of the image area: references, registries, digests, unpacking, root filesystems.

Every one is an ImageError (an MMError), so the CLI prints message and hint and no traceback.
"""
from __future__ import annotations

from vmm.errors import MMError, NotFound


class ImageError(MMError):
    """Root of the image errors."""


class ReferenceError_(ImageError):
    """An image reference cannot be parsed."""

    hint = "references look like alpine, alpine:3.20, ghcr.io/org/name:tag or name@sha256:<64 hex>"


class RegistryError(ImageError):
    """The registry answered with an error or could not be reached."""


class RegistryUnavailable(RegistryError):
    """The registry kept failing transiently (5xx, 429, 408, dropped connections) through every retry."""

    hint = "the registry (or a proxy in front of it) is overloaded or restarting: try again later; the pull resumes"


class AuthError(RegistryError):
    """The registry refused our credentials (or we had none)."""

    hint = "put credentials in ~/.docker/config.json (`auths`), or set DOCKER_CONFIG to its directory"


class ManifestError(ImageError):
    """A manifest or index is malformed, of an unsupported kind, or lacks linux/amd64."""


class DigestMismatch(ImageError):
    """A blob's content does not hash to the digest that names it."""

    hint = "the registry or archive served corrupt data; nothing was stored, pull again"


class UnpackError(ImageError):
    """A layer cannot be unpacked (corrupt, truncated, or unsafe)."""


class UnsafePathError(UnpackError):
    """A layer entry would land outside the root filesystem (traversal, absolute path, link escape)."""

    hint = "the image is malicious or broken; nothing was written outside the staging directory"


class ArchiveError(ImageError):
    """An archive or layout given to `mm image import` is not one we understand."""

    hint = "mm image import takes an oci-archive (.tar), a docker-archive (`docker save`) or an OCI layout directory"


class RootfsError(ImageError):
    """Building a root filesystem image failed."""


class ImageNotFound(ImageError, NotFound):
    """No such image in the local cache."""

    hint = "see `mm image ls`, or pull it with `mm image pull REF`"
