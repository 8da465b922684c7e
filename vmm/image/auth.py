"""Registry credentials and challenges: `~/.docker/config.json` and WWW-Authenticate.

Credentials come from the `auths` section of Docker's config (`$DOCKER_CONFIG/config.json`,
default `~/.docker/config.json`), each entry's `auth` being base64 of `user:password`.
Credential helpers (`credsStore`) are not run: we never execute programs named by a file.
"""
from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from vmm.image.errors import AuthError
from vmm.image.reference import DOCKER_HUB

# Docker Hub's entry in config.json is keyed by its v1 index URL, for history's sake.
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _host_of(key: str) -> str:
    key = re.sub(r"^https?://", "", key)
    return key.split("/", 1)[0]


def credentials(registry: str) -> tuple[str, str] | None:
    """(user, password) for `registry` (e.g. `docker.io`, `127.0.0.1:5000`), or None."""
    path = docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read {path}: {exc}", "fix or remove the file") from None
    auths = config.get("auths") or {}
    wanted = _HUB_KEYS if registry == DOCKER_HUB else (registry,)
    for key, entry in auths.items():
        if key in wanted or _host_of(key) in wanted:
            return _decode_entry(path, key, entry)
    return None


def _decode_entry(path: Path, key: str, entry: dict) -> tuple[str, str] | None:
    if entry.get("username") and entry.get("password"):
        return entry["username"], entry["password"]
    token = entry.get("auth")
    if not token:
        return None
    try:
        user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
        if not sep:
            raise ValueError("no colon")
    except (ValueError, UnicodeDecodeError):
        raise AuthError(f"the `auth` entry for {key} in {path} is not base64 of user:password") from None
    return user, password


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` → ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
              for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


def basic_header(creds: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
