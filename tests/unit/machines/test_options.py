"""`mm run` option parsing with Docker's meaning; bad values are refused with a hint."""
from __future__ import annotations

import pytest

from vmm.errors import UsageError
from vmm.machines import options as o

GiB = 1024**3


@pytest.mark.parametrize("text, mib", [("512m", 512), ("1g", 1024), ("1.5G", 1536), ("33554432", 32),
                                       ("64MiB", 64), ("65536k", 64)])
def test_memory(text, mib):
    assert o.parse_memory(text, host_total=64 * GiB) == mib


@pytest.mark.parametrize("text, needle", [("512", "did you mean 512m"), ("lots", "unit"), ("1m", "32m"),
                                          ("128g", "more than this host")])
def test_bad_memory(text, needle):
    with pytest.raises(UsageError) as err:
        o.parse_memory(text, host_total=64 * GiB)
    assert needle in err.value.message + err.value.hint


def test_memory_against_real_host():
    with pytest.raises(UsageError):
        o.parse_memory("1t")  # no machine here has a TiB


@pytest.mark.parametrize("text, n", [("1", 1), ("2", 2), ("0.5", 1), ("1.5", 2)])
def test_cpus(text, n):
    assert o.parse_cpus(text) == n


@pytest.mark.parametrize("text", ["0", "-1", "two", "nan", "1000"])
def test_bad_cpus(text):
    with pytest.raises(UsageError):
        o.parse_cpus(text)


def test_env_order_and_host_passthrough(tmp_path):
    f = tmp_path / "env"
    f.write_text("# comment\nA=file\nB=file\n\nHOSTONLY\nMISSING\n")
    env = o.parse_env(["B=flag", "C", "D=x=y"], [str(f)], host_env={"C": "host", "HOSTONLY": "h"})
    assert env == {"A": "file", "B": "flag", "C": "host", "D": "x=y", "HOSTONLY": "h"}


@pytest.mark.parametrize("item", ["=x", "1A=b", "A B=c"])
def test_bad_env(item):
    with pytest.raises(UsageError):
        o.parse_env([item], [], host_env={})


def test_missing_env_file():
    with pytest.raises(UsageError):
        o.parse_env([], ["/nonexistent/env"], host_env={})


@pytest.mark.parametrize("spec, want", [
    ("80", o.Publish("0.0.0.0", 0, 80, "tcp")),
    ("8080:80", o.Publish("0.0.0.0", 8080, 80, "tcp")),
    ("127.0.0.1:8080:80/udp", o.Publish("127.0.0.1", 8080, 80, "udp")),
    ("127.0.0.1::80", o.Publish("127.0.0.1", 0, 80, "tcp")),
])
def test_publish(spec, want):
    assert o.parse_publish(spec) == want


@pytest.mark.parametrize("spec", ["0", "70000", "a:80", "80/sctp", "1.2.3:80:80", "x"])
def test_bad_publish(spec):
    with pytest.raises(UsageError):
        o.parse_publish(spec)


def test_labels_workdir_entrypoint_disk():
    assert o.parse_labels(["a=b", "c"]) == {"a": "b", "c": ""}
    with pytest.raises(UsageError):
        o.parse_labels(["=x"])
    with pytest.raises(UsageError):
        o.parse_workdir("relative")
    assert o.parse_entrypoint("") == [] and o.parse_entrypoint("/bin/sh") == ["/bin/sh"]
    assert o.parse_disk_size("2g") == 2048
    with pytest.raises(UsageError):
        o.parse_disk_size("10k")


def test_cpuset_cpus_in_dockers_list_syntax():
    from vmm.machines.options import format_cpuset, parse_cpuset

    have = set(range(8))
    assert parse_cpuset(None) is None
    assert parse_cpuset("0-2,5", have) == [0, 1, 2, 5]
    assert parse_cpuset(" 3 , 1-1", have) == [1, 3]
    assert format_cpuset([0, 1, 2, 5, 7]) == "0-2,5,7"


@pytest.mark.parametrize("text, says", [
    ("x", "invalid --cpuset-cpus"), ("3-1", "invalid --cpuset-cpus"), ("", "invalid --cpuset-cpus"),
    ("1,,2", "invalid --cpuset-cpus"), ("0-9", "CPUs 8-9 are not available here"),
    ("12", "CPU 12 is not available here"), ("0-4000000000", "beyond any host"),
])
def test_bad_cpuset_cpus_are_refused_with_a_hint(text, says):
    from vmm.machines.options import parse_cpuset

    with pytest.raises(UsageError) as e:
        parse_cpuset(text, set(range(8)))
    assert says in e.value.message and e.value.hint
