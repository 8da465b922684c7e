"""`mm top` splits the guest's ps output as Docker's top does."""
from __future__ import annotations

import pytest

from vmm.cli.top import _table
from vmm.machines.exec import GuestCommandFailed, as_json, parse_ps

BUSYBOX = """PID   USER     TIME  COMMAND
    1 root      0:00 /init
   42 root      0:00 sleep 1000
   57 root      0:00 ps -ef
"""
PROCPS = """UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 10:00 ?        00:00:00 /init
nobody        12       1  0 10:01 ?        00:00:00 sh -c while true; do sleep 1; done
"""


def test_busybox_rows_keep_the_command_whole_and_drop_ps_itself():
    titles, rows = parse_ps(BUSYBOX, exclude_pid=57)
    assert titles == ["PID", "USER", "TIME", "COMMAND"]
    assert rows == [["1", "root", "0:00", "/init"], ["42", "root", "0:00", "sleep 1000"]]


def test_procps_columns():
    titles, rows = parse_ps(PROCPS)
    assert titles[1] == "PID" and titles[-1] == "CMD"
    assert rows[1][-1] == "sh -c while true; do sleep 1; done"
    assert as_json(titles, rows) == {"Titles": titles, "Processes": rows}


def test_empty_output_is_an_error():
    with pytest.raises(GuestCommandFailed, match="printed nothing"):
        parse_ps("\n")


def test_table_aligns_columns():
    import io

    out = io.StringIO()
    titles, rows = parse_ps(BUSYBOX, exclude_pid=57)
    _table(titles, rows, out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == titles
    assert lines[2].endswith("sleep 1000")
    assert lines[1].index("/init") == lines[0].index("COMMAND")
