"""Frozen plain-data records without `dataclasses`, for the worker's path to its first KVM_RUN.

    class Limits(Frozen):
        FIELDS = {"uid": REQUIRED, "cpus": 1.0, "ro_paths": ()}   # name -> default, in order

    lim = Limits(5, cpus=2.0)              # positional in FIELDS order, or by name
    lim.replace(cpus=1.0); lim.asdict()    # as dataclasses.replace / asdict (one level deep)
    Limits.field_names()                   # as dataclasses.fields(), names only

Instances are immutable (assignment raises FrozenError, an AttributeError), equal by
class and values, hashed by values, and show their fields in repr. A dict or list
default is copied for each instance. Subclasses add methods and properties as usual.

Why not dataclasses: importing it pulls in `inspect` (with `ast`, `dis`, `tokenize`), and
each decorated class exec()s generated code. In the worker (spec, jail limits, machine
paths, records, the API's requests) that was ~20 ms of `-X importtime` on this host
before the VM could run; devices/legacy/state.py does the same for mutable state.
"""
from __future__ import annotations


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


class FrozenError(AttributeError):
    """Assignment to a field of a frozen record."""


class Frozen:
    """Base of a frozen record: subclasses set FIELDS (name -> default or REQUIRED)."""

    FIELDS: dict[str, object] = {}

    def __init__(self, *args, **kwargs) -> None:
        cls = type(self)
        names = tuple(self.FIELDS)
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes at most {len(names)} positional arguments")
        values = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in self.FIELDS:
                raise TypeError(f"{cls.__name__} has no field {key!r}")
            if key in values:
                raise TypeError(f"{cls.__name__} got {key!r} twice")
            values[key] = value
        store = self.__dict__
        for name, default in self.FIELDS.items():
            if name in values:
                store[name] = values[name]
            elif default is REQUIRED:
                raise TypeError(f"{cls.__name__} needs {name!r}")
            else:
                store[name] = default.copy() if isinstance(default, (dict, list)) else default

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(cls.FIELDS)

    def __setattr__(self, name: str, value) -> None:
        raise FrozenError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise FrozenError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

    def asdict(self) -> dict:
        """The fields as a new dict (values not copied: nested records stay records)."""
        return {name: self.__dict__[name] for name in self.FIELDS}

    def replace(self, **changes) -> "Frozen":
        return type(self)(**{**self.asdict(), **changes})

    def _values(self) -> tuple:
        return tuple(self.__dict__[name] for name in self.FIELDS)

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.asdict().items())
        return f"{type(self).__name__}({inner})"
