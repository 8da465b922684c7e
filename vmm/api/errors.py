"""Errors of the control API: a worker that does not answer, a malformed message, and
errors a worker reports (rebuilt on the client side with the type it named)."""
from __future__ import annotations

from vmm.errors import Conflict, MMError, NotFound, UsageError


class ApiError(MMError):
    """An error reported by the worker, or about talking to it."""


class WorkerUnreachable(ApiError):
    """The worker's socket is missing or refuses connections."""

    hint = "the machine's worker is not running; `mm ps -a` shows its state"


class ProtocolError(ApiError):
    """A message that does not follow PROTOCOL.md (bad JSON, unknown op, wrong version)."""


class UnsupportedVersion(ProtocolError):
    """The peer speaks a protocol version we do not."""

    hint = "the worker was started by a different mm version; restart the machine"


class WrongState(ApiError, Conflict):
    """The operation does not fit the machine's state (pause an exited VM, exec on a paused one)."""


class BadArgument(ApiError, UsageError):
    """An argument has the wrong type or value."""


class Unavailable(ApiError, NotFound):
    """The machine lacks what the operation needs (no vsock device for exec)."""


# Error "type" names on the wire -> the class a client raises. Unknown names become ApiError.
WIRE_TYPES: dict[str, type[ApiError]] = {
    "ProtocolError": ProtocolError,
    "UnsupportedVersion": UnsupportedVersion,
    "WrongState": WrongState,
    "BadArgument": BadArgument,
    "Unavailable": Unavailable,
    "Internal": ApiError,
}
