"""The one line between the jailed VMM and its supervisor: a SOCK_SEQPACKET pair.

The VMM cannot write the store once jailed (the SQLite file is outside its cell, and
the VMM is no longer root), so every state change it records goes through here and
the supervisor writes it. One JSON object per message:

    VMM -> supervisor                                        supervisor -> VMM
    {"op": "transition", "state": "running", "fields": {..}}  {"ok": true} | {"ok": false,
                                                               "error": {...}}
    {"op": "sockets", "paths": [...]}   sockets the VMM listens on; removed by the
                                        supervisor once the VMM has exited
    {"op": "listener"} + SCM_RIGHTS     the seccomp listener fd (vmm.jail.seccomp)
    {"op": "ready", "ok": true} | {"op": "ready", "ok": false, "error": .., "hint": ..}

The supervisor treats every message as hostile input (the VMM may be a guest's now):
it pins the machine id and generation itself, accepts only the worker's own target
states and fields, checks their types and bounds the strings.
"""
from __future__ import annotations

import array
import json
import socket
import threading

from vmm.machines import InvalidTransition, State

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Any

MAX_MESSAGE = 64 * 1024
# What a VMM may ask to record (the supervisor decides the rest).
WORKER_STATES = frozenset({State.RUNNING, State.PAUSED, State.STOPPING, State.EXITED})
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "exit_code": (int, type(None)), "exit_reason": (str, type(None)),
    "error": (str, type(None)), "finished_at": (float, int, type(None)),
}
MAX_TEXT = 4096


class ChannelClosed(Exception):
    """The other side is gone."""


def pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, VMM end)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def send(sock: socket.socket, message: dict[str, Any], fd: int | None = None) -> None:
    data = json.dumps(message).encode()
    if fd is None:
        sock.sendall(data)
    else:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def recv(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and any fds that came with it; ChannelClosed at the end."""
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        raise ChannelClosed()
    try:
        message = json.loads(data)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        message = {"op": "invalid"}
    return message, list(fds)


class StoreProxy:
    """What the VMM's WorkerService sees as its store: `transition()` asks the supervisor."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def transition(self, machine_id: str, target: State, generation: int | None = None, **fields: Any) -> None:
        """machine_id and generation are the supervisor's own; they are not sent."""
        with self._lock:
            send(self.sock, {"op": "transition", "state": State(target).value, "fields": fields})
            reply, _ = recv(self.sock)
        if not reply.get("ok"):
            err = reply.get("error") or {}
            if err.get("type") == "InvalidTransition":
                raise InvalidTransition(err.get("name", "?"), err.get("current", "?"), err.get("wanted", "?"))
            raise RuntimeError(f"the supervisor could not record {target}: {err.get('message')}")


def check_transition(message: dict[str, Any]) -> tuple[State, dict[str, Any]]:
    """Validate a VMM's transition request; ValueError says what is wrong with it."""
    try:
        target = State(message.get("state"))
    except ValueError:
        raise ValueError(f"unknown state {message.get('state')!r}") from None
    if target not in WORKER_STATES:
        raise ValueError(f"a VMM may not record state {target.value}")
    fields = message.get("fields")
    if not isinstance(fields, dict):
        raise ValueError("fields must be an object")
    for key, value in fields.items():
        if key not in FIELD_TYPES:
            raise ValueError(f"a VMM may not set {key!r}")
        if not isinstance(value, FIELD_TYPES[key]) or isinstance(value, bool):
            raise ValueError(f"{key} has the wrong type")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            fields[key] = value[:MAX_TEXT]
    return target, fields
