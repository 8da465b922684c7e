"""Names of what mm makes in the host namespace, scoped by the namespace prefix.

Bridges, the host nft table and VM namespaces are host-wide, but leases live in one
state store (MM_STATE). Several stores on one host (engineers and test runs side by
side in the shared lab) must not take each other's bridge, rewrite or delete each
other's nft table, or prune each other's namespaces. So everything host-wide is named
from one prefix, `MM_NETNS_PREFIX` (default `mm-`):

| prefix | namespaces | bridges | host nft table |
| --- | --- | --- | --- |
| `mm-` (default) | `mm-<id12>` | `mm0`, `mm1`, ... | `ip mm` |
| `mt1a2b3c-` | `mt1a2b3c-<id12>` | `mt1a2b3c0`, ... | `ip mm_mt1a2b3c` |

Two stores with one prefix are one scope: they share these names, as before.
"""
from __future__ import annotations

import os
import re

from vmm.network.errors import NetworkError

DEFAULT_PREFIX = "mm-"
# A bridge name is the tag plus a number, and Linux link names hold at most 15 bytes.
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,10}-?$")


def prefix() -> str:
    value = os.environ.get("MM_NETNS_PREFIX") or DEFAULT_PREFIX
    if not _PREFIX_RE.match(value):
        raise NetworkError(f"bad MM_NETNS_PREFIX {value!r}",
                           hint="use a letter, then up to 10 letters or digits, optionally ending in '-'")
    return value


def is_default() -> bool:
    return prefix() == DEFAULT_PREFIX


def tag() -> str:
    """The prefix without its trailing '-': the stem of this scope's bridge names."""
    return prefix().rstrip("-")


def host_table() -> str:
    """This scope's nft table in the host namespace."""
    return "mm" if is_default() else f"mm_{tag()}"


def bridge_stem() -> str:
    return "mm" if is_default() else tag()
