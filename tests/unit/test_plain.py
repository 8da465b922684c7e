"""vmm.plain.Frozen: the dataclass stand-in of the worker's start path."""
from __future__ import annotations

import pytest

from vmm.plain import REQUIRED, Frozen, FrozenError


class Point(Frozen):
    FIELDS = {"x": REQUIRED, "y": 0, "tags": [], "meta": {}}

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


def test_positional_keyword_and_defaults():
    p = Point(1, y=2)
    assert (p.x, p.y, p.tags, p.meta, p.norm1) == (1, 2, [], {}, 3)
    assert Point.field_names() == ("x", "y", "tags", "meta")


def test_mutable_defaults_are_per_instance():
    a, b = Point(1), Point(2)
    a.tags.append("t")
    assert b.tags == [] and Point.FIELDS["tags"] == []


@pytest.mark.parametrize("args, kwargs, text", [
    ((), {}, "needs 'x'"),
    ((1, 2, [], {}, 5), {}, "at most 4 positional"),
    ((1,), {"z": 3}, "no field 'z'"),
    ((1,), {"x": 3}, "got 'x' twice"),
])
def test_bad_arguments_are_type_errors(args, kwargs, text):
    with pytest.raises(TypeError, match=text):
        Point(*args, **kwargs)


def test_frozen():
    p = Point(1)
    with pytest.raises(FrozenError):
        p.x = 2
    with pytest.raises(AttributeError):
        del p.y
    assert p.x == 1


def test_equality_hash_replace_asdict_repr():
    p = Point(1, 2)
    assert p == Point(1, 2) and p != Point(1, 3) and p != (1, 2)
    assert hash(Point(1, 2, (), ())) == hash(Point(1, 2, (), ()))
    q = p.replace(y=5)
    assert (q.x, q.y, p.y) == (1, 5, 2) and type(q) is Point
    assert p.asdict() == {"x": 1, "y": 2, "tags": [], "meta": {}}
    assert repr(p) == "Point(x=1, y=2, tags=[], meta={})"

    class Other(Frozen):
        FIELDS = {"x": REQUIRED, "y": 0, "tags": [], "meta": {}}

    assert Other(1, 2) != p
