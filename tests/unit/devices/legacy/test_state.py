"""devices.legacy.state.State: defaults, per-instance list copies, dict round trip, equality."""
import pytest

from devices.legacy.state import State


class Demo(State):
    FIELDS = {"a": 1, "b": None, "rx": []}


def test_defaults_copies_and_round_trip():
    x, y = Demo(), Demo(a=5)
    x.rx.append(7)
    assert y.rx == [] and (x.a, y.a, x.b) == (1, 5, None)   # lists are not shared
    saved = x.asdict()
    saved["rx"].append(8)                                     # asdict copies too
    assert x.rx == [7]
    again = Demo(**x.asdict())
    assert again == x and again is not x and again != y
    assert repr(again) == "Demo(a=1, b=None, rx=[7])"


def test_unknown_fields_are_refused():
    with pytest.raises(TypeError, match="no field c"):
        Demo(c=1)
    with pytest.raises(AttributeError, match="no field 'c'"):
        Demo().c = 1
    with pytest.raises(TypeError):
        hash(Demo())
