"""Opening something that is not a usable /dev/kvm gives a typed error with a hint."""
from __future__ import annotations

import errno

import pytest

from vmm.errors import HostError, KvmError
from vmm.kvm import Kvm, KvmCapabilityError, KvmUnavailable
from vmm.kvm.ioctl import _ioctl


def test_missing_device():
    with pytest.raises(KvmUnavailable) as e:
        Kvm("/nonexistent/kvm")
    assert "does not exist" in e.value.message and e.value.hint
    assert isinstance(e.value, HostError)


def test_not_a_kvm_device():
    with pytest.raises(KvmUnavailable) as e:
        Kvm("/dev/null")
    assert "not a KVM device" in e.value.message


def test_ioctl_error_carries_name_and_errno():
    with open("/dev/null", "rb") as f:
        with pytest.raises(KvmError) as e:
            _ioctl(f.fileno(), "KVM_CHECK_EXTENSION", 0)
    assert e.value.ioctl == "KVM_CHECK_EXTENSION" and e.value.errno == errno.ENOTTY
    assert "KVM_CHECK_EXTENSION" in str(e.value)


def test_unknown_ioctl_name_is_a_bug_not_a_guess():
    with pytest.raises(KeyError):
        _ioctl(0, "KVM_NO_SUCH_THING", 0)


def test_capability_error_lists_what_is_missing():
    err = KvmCapabilityError(["KVM_CAP_IRQFD", "KVM_CAP_PIT2"])
    assert "KVM_CAP_IRQFD, KVM_CAP_PIT2" in err.message and err.hint
