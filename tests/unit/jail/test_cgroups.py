"""MachineCgroup's limit files, written into a plain directory standing in for the
cgroup (the real hierarchy is in tests/worker/test_jail.py): no CPU limit is "max"
(v2) or -1 (v1), and limits() reads either back as None."""
from __future__ import annotations

import pytest

from vmm.jail.cgroups import CONTROLLERS, MachineCgroup

MiB = 1 << 20


def _cgroup(tmp_path, version: int) -> MachineCgroup:
    dirs = {c: tmp_path if version == 2 else tmp_path / c for c in CONTROLLERS}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    return MachineCgroup(version, dirs)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("cpus", [None, 0.5, 2.5])
def test_cpu_limit_written_and_read_back(tmp_path, version, cpus):
    cg = _cgroup(tmp_path, version)
    cg._set(cpus, 300 * MiB, 70)
    if version == 2:
        quota = (tmp_path / "cpu.max").read_text().split()[0]
        assert quota == ("max" if cpus is None else str(round(cpus * 100_000)))
    else:
        quota = (tmp_path / "cpu" / "cpu.cfs_quota_us").read_text()
        assert quota == ("-1" if cpus is None else str(round(cpus * 100_000)))
    assert cg.limits() == {"cpus": cpus, "memory": 300 * MiB, "pids": 70}
