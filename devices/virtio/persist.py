"""Saved state of the virtio-mmio transport (registers and queue positions), and the
generic way back from plain data.

Every device state is a frozen dataclass of ints, strings, bools, tuples and nested
state dataclasses, so the snapshot code can write `dataclasses.asdict(state)` as JSON
and rebuild it with `from_dict(StateClass, data)`.
"""
from __future__ import annotations

import dataclasses
import types
import typing

from .ring import QueueState


@dataclasses.dataclass(frozen=True)
class TransportState:
    status: int
    acked_features: int
    driver_features: int
    device_features_sel: int
    driver_features_sel: int
    queue_sel: int
    interrupt_status: int
    config_generation: int
    queues: tuple[QueueState, ...]

    @classmethod
    def from_dict(cls, d: dict) -> "TransportState":
        return from_dict(cls, d)


def from_dict(cls, data):
    """Rebuild a (nested) state dataclass from what dataclasses.asdict produced, with
    JSON's lists accepted where the state holds tuples."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _convert(hints[f.name], data[f.name]) for f in dataclasses.fields(cls)})


def _convert(tp, value):
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value))
    return value
