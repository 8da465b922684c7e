"""Plain-data state for the legacy devices, without `dataclasses`.

    class SerialState(State):
        FIELDS = {"ier": 0, "rx": []}     # name -> default (lists are copied per instance)

    s = SerialState(ier=3); s.ier = 1     # mutable attributes, unknown names refused
    SerialState(**s.asdict()) == s        # save() / restore() round trip, by value

Why not dataclasses: these devices are built on every `mm boot`, and importing
`dataclasses` pulls in `inspect` (and `ast`, `dis`, `tokenize`, `re`): ~20 ms of CPU on the
host and well over a second under the lab's emulation, all before the guest starts.
"""
from __future__ import annotations


class State:
    """Base of a device's state: subclasses set FIELDS (name -> default)."""

    FIELDS: dict[str, object] = {}

    def __init__(self, **values) -> None:
        unknown = set(values) - set(self.FIELDS)
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field {', '.join(sorted(unknown))}")
        for name, default in self.FIELDS.items():
            value = values.get(name, default)
            setattr(self, name, list(value) if isinstance(value, list) else value)

    def __setattr__(self, name: str, value) -> None:
        if name not in self.FIELDS:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        object.__setattr__(self, name, value)

    def asdict(self) -> dict:
        """The fields as a new dict (lists copied), for save()."""
        out = {}
        for name in self.FIELDS:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, list) else value
        return out

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.asdict() == other.asdict()

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.asdict().items())
        return f"{type(self).__name__}({inner})"
