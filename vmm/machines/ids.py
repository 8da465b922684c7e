"""Machine ids and names, the way Docker does them.

An id is 64 lowercase hex characters (256 random bits); its first 12 are the short id
shown by `mm ps` and used for per-machine paths. A name is chosen by the user
(`--name`) or generated as adjective_noun.
"""
from __future__ import annotations

import os
import re

from vmm.machines.errors import BadName

ID_LEN = 64
SHORT_LEN = 12
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
MAX_NAME = 63  # names become hostnames in the guest

_ADJECTIVES = (
    "brave", "calm", "clever", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid",
    "merry", "nimble", "proud", "quick", "quiet", "sharp", "smart", "swift", "tender", "vivid",
)
_NOUNS = (
    "babbage", "curie", "darwin", "euler", "fermi", "gauss", "hopper", "kepler", "lovelace",
    "meitner", "newton", "noether", "pascal", "ritchie", "shannon", "thompson", "turing",
    "volta", "wozniak", "yalow",
)


def new_id() -> str:
    # os.urandom, not secrets: that imports hmac and with it OpenSSL (~45 ms in the lab)
    return os.urandom(ID_LEN // 2).hex()


def short_id(machine_id: str) -> str:
    return machine_id[:SHORT_LEN]


def looks_like_id_prefix(text: str) -> bool:
    return 0 < len(text) <= ID_LEN and bool(_HEX_RE.match(text))


def validate_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or not _NAME_RE.match(name):
        raise BadName(f"invalid machine name {name!r}")
    return name


def random_name() -> str:
    """adjective_noun; the store draws again on a clash."""
    return f"{_pick(_ADJECTIVES)}_{_pick(_NOUNS)}"


def _pick(words: tuple[str, ...]) -> str:
    """A uniformly drawn word (os.urandom, rejecting the biased top of the range)."""
    n = len(words)
    limit = (1 << 32) - (1 << 32) % n
    while True:
        r = int.from_bytes(os.urandom(4), "little")
        if r < limit:
            return words[r % n]
