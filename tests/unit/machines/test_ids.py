"""Ids and names behave like Docker's."""
from __future__ import annotations

import pytest

from vmm.machines import BadName, new_id, random_name, short_id, validate_name
from vmm.machines.ids import looks_like_id_prefix


def test_id_is_64_hex_and_short_is_12():
    i = new_id()
    assert len(i) == 64 and int(i, 16) >= 0 and i == i.lower()
    assert short_id(i) == i[:12]
    assert new_id() != i


@pytest.mark.parametrize("name", ["web", "a", "web-1", "db_2.x", "9lives"])
def test_good_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", ".x", "_x", "a b", "a/b", "é", "x" * 64])
def test_bad_names(name):
    with pytest.raises(BadName) as err:
        validate_name(name)
    assert err.value.hint


def test_random_name_is_valid():
    for _ in range(50):
        validate_name(random_name())


def test_id_prefix_detection():
    assert looks_like_id_prefix("abc123")
    assert not looks_like_id_prefix("web")
    assert not looks_like_id_prefix("")
