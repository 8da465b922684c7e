"""Benchmarks on this host's /dev/kvm; skipped with a reason where there is none."""
from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        return
    for item in items:
        if "benchmarks/kvm/" in str(item.fspath):
            item.add_marker(pytest.mark.skip(reason="needs a usable /dev/kvm"))
