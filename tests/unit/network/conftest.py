"""Unit tests of the network area render names for the default scope (prefix `mm-`)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def default_scope(monkeypatch):
    monkeypatch.delenv("MM_NETNS_PREFIX", raising=False)
