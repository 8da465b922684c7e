"""Fixtures for tests on this host's /dev/kvm: skip with a reason when there is none."""
from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    reason = None
    if not os.path.exists("/dev/kvm"):
        reason = "no /dev/kvm on this host"
    elif not os.access("/dev/kvm", os.R_OK | os.W_OK):
        reason = "no permission to open /dev/kvm"
    elif shutil.which("as") is None or shutil.which("objcopy") is None:
        reason = "test guests are assembled with binutils (as, objcopy): apt-get install binutils"
    for item in items:
        if "tests/kvm/" in str(item.fspath):
            item.add_marker(pytest.mark.kvm)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def kvm():
    from vmm.kvm import Kvm

    k = Kvm()
    yield k
    k.close()
