"""JailSpec: defaults, limits derived from the machine, refused values, the CLI helper."""
from __future__ import annotations

import pytest

from vmm.jail import JailError, JailSpec, for_machine
from vmm.jail.config import DEFAULT_MEMORY_OVERHEAD, JAIL_ID_BASE, PIDS_OVERHEAD, MiB


def test_an_empty_spec_is_a_full_jail_with_the_machines_limits_and_no_cpu_limit():
    spec = JailSpec.from_dict({})
    assert spec.enabled
    limits = spec.resolved({"cpus": 4, "memory": 512 * MiB, "kernel": "/k/vmlinux", "initrd": "/k/initrd"}, 1234)
    assert (limits.uid, limits.gid) == (JAIL_ID_BASE + 1234,) * 2
    assert limits.cpus is None and limits.pids == 4 + PIDS_OVERHEAD  # the vCPU count alone sets no quota
    assert limits.memory == 512 * MiB + DEFAULT_MEMORY_OVERHEAD
    assert limits.ro_paths == ("/k/vmlinux", "/k/initrd")  # Machine.start() reads them after the jail


def test_a_machine_without_memory_gets_no_memory_limit():
    limits = JailSpec.from_dict(None).resolved({}, 1)
    assert limits.memory is None and limits.cpus is None and limits.ro_paths == ()


def test_explicit_settings_win_and_round_trip():
    data = {"cpus": 1.5, "memory": 300 * MiB, "pids": 20, "uid": 5000, "gid": 6000, "ro_paths": ["/srv/x"]}
    spec = JailSpec.from_dict(data)
    assert JailSpec.from_dict(spec.to_dict()) == spec
    limits = spec.resolved({"cpus": 2, "memory": 64 * MiB, "kernel": "/srv/x"}, 99)
    assert (limits.uid, limits.gid, limits.cpus, limits.memory, limits.pids) == (5000, 6000, 1.5, 300 * MiB, 20)
    assert limits.ro_paths == ("/srv/x",)


@pytest.mark.parametrize("data, needle", [
    ({"cpus": 0}, "cpus"), ({"cpus": 0.001}, "below 0.01"), ({"memory": 1024}, "16 MiB"), ({"pids": 2}, "pids"),
    ({"uid": 0}, "unprivileged"), ({"gid": 2**32 - 1}, "unprivileged"),
    ({"ro_paths": ["relative"]}, "absolute"), ({"seccomp": False}, "unknown jail settings"),
])
def test_bad_settings_are_refused(data, needle):
    with pytest.raises(JailError) as err:
        JailSpec.from_dict(data)
    assert needle in err.value.message


def test_for_machine_is_what_mm_run_writes():
    data = for_machine(vcpus=2, memory_mib=512, cpus=1.5)
    spec = JailSpec.from_dict(data)
    assert spec.enabled and spec.cpus == 1.5 and spec.pids == 2 + PIDS_OVERHEAD
    assert spec.memory == 512 * MiB + DEFAULT_MEMORY_OVERHEAD
    assert JailSpec.from_dict(for_machine(1, 256, enabled=False)).enabled is False
    assert for_machine(3, 256)["cpus"] is None  # 3 vCPUs, no CPU-time limit over them and the I/O threads


def test_run_options_for_the_jail():
    from vmm.errors import UsageError
    from vmm.machines import options as o

    assert o.parse_pids_limit(None) is None and o.parse_pids_limit("100") == 100
    for bad in ("0", "lots", "999"):
        with pytest.raises(UsageError):
            o.parse_cpu_quota(bad)
    for bad in ("3", "many"):
        with pytest.raises(UsageError):
            o.parse_pids_limit(bad)
    opts = o.RunOptions(image="x", vcpus=2, cpu_quota=1.5, pids_limit=100)
    assert (opts.no_jail, opts.cpu_quota, opts.pids_limit) == (False, 1.5, 100)
    assert JailSpec.from_dict(for_machine(2, 256, cpus=1.5, pids=100)).pids == 100


def test_mm_jail_memory_sets_the_vmm_limit_for_tests():
    from vmm.jail.config import MEMORY_ENV

    assert JailSpec.from_dict(for_machine(1, 512, env={MEMORY_ENV: "256m"})).memory == 256 * MiB
    assert for_machine(1, 512, env={MEMORY_ENV: ""})["memory"] == 512 * MiB + DEFAULT_MEMORY_OVERHEAD
    assert for_machine(1, 512, env={})["memory"] == 512 * MiB + DEFAULT_MEMORY_OVERHEAD


@pytest.mark.parametrize("value, needle", [("lots", "invalid MM_JAIL_MEMORY"), ("1m", "below the 16 MiB")])
def test_a_bad_mm_jail_memory_is_a_clear_error(value, needle):
    from vmm.errors import ConfigError
    from vmm.jail.config import MEMORY_ENV

    with pytest.raises(ConfigError) as err:
        for_machine(1, 256, env={MEMORY_ENV: value})
    assert needle in err.value.message and MEMORY_ENV in err.value.hint


@pytest.mark.parametrize("cpus, limit, quota", [
    ("1", None, None), ("2", None, None), ("2.0", None, None),  # whole vCPUs: no limit (Docker without --cpus)
    ("1.5", None, 1.5), ("0.5", None, 0.5),                     # a fraction is Docker's --cpus: a quota
    ("1", "1.5", 1.5), ("2", "0.25", 0.25), ("0.5", "2", 2.0),  # --cpu-limit wins, below or above the vCPUs
])
def test_the_cpu_limit_is_none_unless_asked_for(cpus, limit, quota):
    from vmm.machines import options as o

    assert o.parse_cpu_quota(cpus, limit, host_cpus=2) == quota
    assert JailSpec.from_dict(for_machine(o.parse_cpus(cpus), 256, cpus=quota)).cpus == quota


@pytest.mark.parametrize("cpus, limit, needle", [
    ("1", "lots", "invalid --cpu-limit"), ("1", "0", "out of range"), ("1", "0.001", "out of range"),
    ("1", "3", "out of range"), ("1", "nan", "out of range"), ("0.001", None, "less CPU time"),
])
def test_a_bad_cpu_limit_is_refused_with_the_range(cpus, limit, needle):
    from vmm.errors import UsageError
    from vmm.machines import options as o

    with pytest.raises(UsageError) as err:
        o.parse_cpu_quota(cpus, limit, host_cpus=2)
    assert needle in err.value.message
    if limit not in (None, "lots"):
        assert "0.01 to 2" in err.value.hint


def test_mm_run_passes_the_cpu_limit_to_the_options():
    from vmm.cli.run import options_from

    assert options_from("img", [], cpus="2").cpu_quota is None
    assert options_from("img", [], cpus="1.5").cpu_quota == 1.5
    assert options_from("img", [], cpus="1", cpu_limit="0.5").cpu_quota == 0.5
