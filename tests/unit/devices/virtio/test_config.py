"""Parsing of the --disk / --tap / --vsock / --balloon device specs."""
from __future__ import annotations

import pytest

from devices.virtio.config import BalloonSpec, DiskSpec, SpecError, TapSpec, VsockSpec, default_mac


def test_disk_specs(tmp_path):
    assert DiskSpec.parse("/x/disk.img") == DiskSpec("/x/disk.img", False)
    assert DiskSpec.parse("/x/disk.img:ro") == DiskSpec("/x/disk.img", True)
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    dev = DiskSpec.parse(f"{img}:ro").build()
    assert dev.read_only and dev.capacity == 8
    dev.close()
    with pytest.raises(SpecError):
        DiskSpec.parse(":ro")


def test_tap_specs():
    assert TapSpec.parse("tap0:52:54:00:AA:bb:cc") == TapSpec("tap0", "52:54:00:aa:bb:cc")
    assert TapSpec.parse("tap0").mac == default_mac("tap0")
    for bad in ("", "x" * 16, "tap0:zz"):
        with pytest.raises(SpecError):
            TapSpec.parse(bad)


def test_vsock_specs():
    assert VsockSpec.parse("3:/tmp/v.sock") == VsockSpec(3, "/tmp/v.sock")
    for bad in ("3", "x:/a", "2:/a", "3:"):
        with pytest.raises(SpecError):
            VsockSpec.parse(bad)


def test_balloon_specs():
    assert BalloonSpec.parse(None) == BalloonSpec(0)
    assert BalloonSpec.parse("256").target_mib == 256
    assert BalloonSpec.parse(64) == BalloonSpec(64, reporting=True)
    assert BalloonSpec.parse("0,reporting=off") == BalloonSpec(0, reporting=False)
    assert BalloonSpec.parse("8,reporting=on").reporting
    for bad in ("lots", "8,reporting=maybe", "8,stats=off", ",reporting=off"):
        with pytest.raises(SpecError):
            BalloonSpec.parse(bad)


def test_balloon_spec_builds_a_device_without_reporting_when_asked():
    from devices.virtio.balloon import F_REPORTING
    from devices.virtio.constants import bit

    assert BalloonSpec.parse("0").build().avail_features & bit(F_REPORTING)
    assert not BalloonSpec.parse("0,reporting=off").build().avail_features & bit(F_REPORTING)
