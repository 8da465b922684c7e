"""Wire format of the control API, version 1 (documented in PROTOCOL.md).

Every message is one JSON object on one line (UTF-8, '\n'-terminated, at most
MAX_LINE bytes). A request carries the version, an id the response echoes, the op and
its args; a response carries `ok` and either `result` or `error` {type, message, hint}.
Two ops upgrade the connection after their `ok` response: `console` turns it into a
raw byte stream, `exec` passes a connected stream to the guest agent as an SCM_RIGHTS fd
with the response.
"""
from __future__ import annotations

import json

from vmm.api.errors import WIRE_TYPES, ApiError, ProtocolError, UnsupportedVersion
from vmm.plain import REQUIRED, Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Any

VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_LINE = 64 * 1024

# op -> the argument names it accepts (all optional unless listed in REQUIRED).
OPS: dict[str, tuple[str, ...]] = {
    "hello": (),
    "status": (),
    "pause": (),
    "resume": (),
    "stop": ("timeout",),
    "kill": ("signal",),
    "stats": (),
    "wait": (),
    "console": ("offset",),
    "exec": ("port",),
    "attach": ("offset", "stdin"),
}
REQUIRED: dict[str, tuple[str, ...]] = {"exec": ("port",)}
UPGRADING = frozenset({"console", "exec", "attach"})


class Request(Frozen):
    FIELDS = {"op": REQUIRED, "args": {}, "id": 0, "v": VERSION}  # str, dict[str, Any], int, int

    def encode(self) -> bytes:
        return _line({"v": self.v, "id": self.id, "op": self.op, "args": self.args})


def _line(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    if len(data) > MAX_LINE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_LINE}")
    return data


def _parse(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_LINE:
        raise ProtocolError(f"message longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a message must be a JSON object")
    return obj


def decode_request(line: bytes) -> Request:
    """Parse and validate one request line; raises ProtocolError / UnsupportedVersion."""
    obj = _parse(line)
    v = obj.get("v")
    if v not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"protocol version {v!r} not supported (this worker speaks {VERSION})")
    op, args, rid = obj.get("op"), obj.get("args", {}), obj.get("id", 0)
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ProtocolError("`id` must be an integer")
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}; known: {', '.join(sorted(OPS))}")
    if not isinstance(args, dict):
        raise ProtocolError("`args` must be an object")
    unknown = set(args) - set(OPS[op])
    if unknown:
        raise ProtocolError(f"op {op!r} takes no argument(s) {', '.join(sorted(unknown))}")
    missing = [a for a in REQUIRED.get(op, ()) if a not in args]
    if missing:
        raise ProtocolError(f"op {op!r} needs argument(s) {', '.join(missing)}")
    return Request(op=op, args=args, id=rid, v=v)


def ok(rid: int, result: dict[str, Any] | None = None) -> bytes:
    return _line({"v": VERSION, "id": rid, "ok": True, "result": result or {}})


def error(rid: int, exc: BaseException) -> bytes:
    """An error response; MMErrors keep their message and hint, anything else is Internal."""
    if isinstance(exc, ApiError):
        kind = next((k for k, cls in WIRE_TYPES.items() if type(exc) is cls), "Internal")
    else:
        kind = "Internal"
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    hint = getattr(exc, "hint", "") or ""
    return _line({"v": VERSION, "id": rid, "ok": False,
                  "error": {"type": kind, "message": message, "hint": hint}})


def decode_response(line: bytes, expect_id: int | None = None) -> dict[str, Any]:
    """The `result` of a response line, or raise the error it carries."""
    obj = _parse(line)
    if obj.get("v") not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"worker answered with protocol version {obj.get('v')!r}")
    if expect_id is not None and obj.get("id") != expect_id:
        raise ProtocolError(f"response id {obj.get('id')!r} does not match request {expect_id}")
    if obj.get("ok") is True:
        result = obj.get("result", {})
        if not isinstance(result, dict):
            raise ProtocolError("`result` must be an object")
        return result
    err = obj.get("error")
    if not isinstance(err, dict):
        raise ProtocolError("an error response needs an `error` object")
    cls = WIRE_TYPES.get(str(err.get("type")), ApiError)
    raise cls(str(err.get("message", "worker error")), str(err.get("hint", "")) or None)
