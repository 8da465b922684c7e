"""OCI images: references, registry pulls, local imports, the blob cache, unpacking, root filesystems.

The API the rest of mm uses:

    from vmm import image
    img = image.resolve("alpine")        # pulls when missing; resolve() alone = the default image
    img.digest, img.config["Cmd"]        # manifest digest, OCI runtime config
    img.rootfs_path                      # read-only root filesystem image (built once, cached)
    image.create_writable_disk(path, "1G")   # sparse ext4 for the VM's overlay upper layer

Modules: reference (parsing), auth + registry (v2 API client), manifest (media types,
platform choice), store (content-addressed cache), pull, importer (archives and
layouts), unpack (safe layer application), rootfs (filesystem images), default (the
built-in busybox image), images (Image and resolve), errors.
"""
from __future__ import annotations

from vmm.image.errors import ImageError, ImageNotFound
from vmm.image.images import DEFAULT_IMAGE, Image, lookup, resolve
from vmm.image.reference import Reference, parse
from vmm.image.rootfs import create_writable_disk
from vmm.image.store import Store

__all__ = ["DEFAULT_IMAGE", "Image", "ImageError", "ImageNotFound", "Reference", "Store",
           "create_writable_disk", "lookup", "parse", "resolve"]
