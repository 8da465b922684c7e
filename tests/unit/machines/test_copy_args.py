"""`mm cp`'s MACHINE:PATH grammar (Docker's splitCpArg) and the pairs it refuses."""
from __future__ import annotations

import pytest

from vmm.errors import UsageError
from vmm.machines.copy import CpArg, parse_cp_arg, parse_cp_args


@pytest.mark.parametrize("arg, expected", [
    ("vm:/etc/hosts", CpArg("vm", "/etc/hosts")),
    ("vm:etc/hosts", CpArg("vm", "/etc/hosts")),          # relative to the guest's /
    ("vm:/", CpArg("vm", "/")),
    ("vm:/a:b", CpArg("vm", "/a:b")),                     # only the first ':' splits
    ("vm:/dir/.", CpArg("vm", "/dir/.")),
    ("a1b2c3d4e5f6:/x", CpArg("a1b2c3d4e5f6", "/x")),
    ("file.txt", CpArg(None, "file.txt")),
    ("/abs/with:colon", CpArg(None, "/abs/with:colon")),  # absolute: always local
    ("./rel:colon", CpArg(None, "./rel:colon")),          # ./ forces local
    ("../up:colon", CpArg(None, "../up:colon")),
    ("-", CpArg(None, "-")),
    ("dir/", CpArg(None, "dir/")),
])
def test_grammar(arg, expected):
    assert parse_cp_arg(arg) == expected


@pytest.mark.parametrize("arg, message", [
    ("", "empty path"),
    (":/x", "names no machine"),
    ("vm:", "names no path"),
])
def test_bad_args(arg, message):
    with pytest.raises(UsageError, match=message):
        parse_cp_arg(arg)


def test_stdio_flags():
    assert parse_cp_arg("-").is_stdio
    assert not parse_cp_arg("vm:-").is_stdio
    assert not parse_cp_arg("./-").is_stdio


@pytest.mark.parametrize("src, dest, message", [
    ("a", "b", "one of SRC and DEST must be MACHINE:PATH"),
    ("-", "-", "one of SRC and DEST must be MACHINE:PATH"),
    ("-", "./out", "one of SRC and DEST must be MACHINE:PATH"),
    ("vm1:/a", "vm2:/b", "between two machines"),
])
def test_bad_pairs(src, dest, message):
    with pytest.raises(UsageError, match=message):
        parse_cp_args(src, dest)


def test_good_pairs():
    assert parse_cp_args("-", "vm:/tmp") == (CpArg(None, "-"), CpArg("vm", "/tmp"))
    assert parse_cp_args("vm:/etc", "-") == (CpArg("vm", "/etc"), CpArg(None, "-"))
    assert str(parse_cp_arg("vm:x")) == "vm:/x"
