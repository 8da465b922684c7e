"""Image references: `alpine` → `docker.io/library/alpine:latest`, tags, digests, `host:port/name`.

Follows the Docker rules: the first path component is a registry when it contains a `.`
or a `:` or is `localhost`; otherwise the image lives on Docker Hub, where one-component
names get the `library/` namespace.
"""
from __future__ import annotations

import re

from vmm.image.errors import ReferenceError_
from vmm.plain import REQUIRED, Frozen

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


# A vmm.plain.Frozen record, not a dataclass: `mm run`'s path imports no dataclasses (and so
# no inspect, ast, dis, tokenize), a second of start-up under the lab's emulation.
class Reference(Frozen):
    """A parsed reference; `tag` is None only when a digest is given alone."""

    FIELDS = {"registry": REQUIRED, "repository": REQUIRED, "tag": None, "digest": None}  # str, str, str|None, str|None

    @property
    def name(self) -> str:
        """`registry/repository`, the repository's full name."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def familiar(self) -> str:
        """The short form people type (`alpine:latest`, `mm/default:latest`)."""
        text = str(self)
        for prefix in (f"{DOCKER_HUB}/library/", f"{DOCKER_HUB}/"):
            if text.startswith(prefix):
                return text[len(prefix):]
        return text

    @property
    def api_host(self) -> str:
        """Host (and port) of the registry's v2 API."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def selector(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG


def parse(text: str) -> Reference:
    """Parse and normalize `text`; raises ReferenceError_ with the reason."""
    if not text or text != text.strip() or len(text) > 4096:
        raise ReferenceError_(f"invalid image reference {text!r}")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise ReferenceError_(f"invalid digest {digest!r} in {text!r}", "digests are sha256:<64 lowercase hex>")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ReferenceError_(f"invalid tag {tag!r} in {text!r}")
    parts = rest.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry, parts = parts[0], parts[1:]
    else:
        registry = DOCKER_HUB
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and len(parts) == 1:
        parts = ["library", *parts]
    for part in parts:
        if not _COMPONENT.match(part):
            raise ReferenceError_(f"invalid repository name component {part!r} in {text!r}",
                                  "repository names are lowercase letters, digits and . _ - separators")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, "/".join(parts), tag, digest)
