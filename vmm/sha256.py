"""SHA-256 for small inputs without hashlib's start-up: importing hashlib loads OpenSSL's
libcrypto (~45 ms of a `mm run` in the lab), while the interpreter's built-in module
hashes names, configs and the 100 KB guest init as fast as that matters. Large data
(image layers, pulls) still goes through hashlib, imported where it is hashed."""
from __future__ import annotations


def _builtin():
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython 3.12+
        except ImportError:  # an interpreter without them: OpenSSL's, same digests
            from hashlib import sha256
    return sha256


sha256 = _builtin()
