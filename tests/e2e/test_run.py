"""`mm run` attached, as a user types it, with real guests (the lab on a PVM host): the
default image's greeting, exit codes (0, 1, 3, a signal), separate stdout and stderr,
-e / --env-file / -w / -u applied, -i stdin, -t a terminal, --rm leaving nothing, and a
real Debian image.

Every `mm run` here is one guest boot (tens of seconds in the lab), so each boot checks
several things. Machines run with `--network none` (networking is the lifecycle and
network tests' subject), in a private state directory (tests/e2e/mm_shell.py).
"""
from __future__ import annotations

import pytest

from tests.e2e.mm_shell import GREETING, IMAGE, MMShell, explain, values


@pytest.fixture(scope="module")
def mm(guest_host):
    shell = MMShell(guest_host, "run")
    yield shell
    shell.close()


def test_default_image_greets_and_rm_leaves_nothing(mm):
    r = mm.sh(f"""
        run --rm --network none {IMAGE} >out 2>err; echo rc=$?
        echo "machines=$("$MM" ps -aq | wc -l) dirs=$(ls -A "$MM_STATE/machines" 2>/dev/null | wc -l)"
    """)
    v = values(r)
    assert v.get("rc") == "0", explain(r) + mm.out("err")
    assert mm.out("out") == GREETING + "\n"
    assert (v["machines"], v["dirs"]) == ("0", "0"), "--rm left the machine behind"


def test_exit_code_env_workdir_user_and_separate_streams(mm):
    r = mm.sh(f"""
        printf 'FROM_FILE=yes\\n# a comment\\nOVERRIDE=file\\n' > run.env
        export PASSED=from-host
        run --rm --network none -e A=1 -e 'B=two words' -e PASSED -e OVERRIDE=flag --env-file run.env \\
            -w /tmp -u nobody {IMAGE} sh -c \\
            'echo "a=$A b=$(echo $B | tr " " _) passed=$PASSED file=$FROM_FILE override=$OVERRIDE"
             echo "uid=$(id -u) gid=$(id -g) pwd=$(pwd)"; echo to-stderr >&2; exit 3' >out 2>err
        echo rc=$?
    """)
    out, err = mm.out("out"), mm.out("err")
    v = values(r) | dict(w.split("=", 1) for w in out.split() if "=" in w)
    assert v.get("rc") == "3", explain(r) + err
    assert (v["a"], v["b"], v["passed"], v["file"], v["override"]) == ("1", "two_words", "from-host", "yes", "flag")
    assert (v["uid"], v["gid"], v["pwd"]) == ("65534", "65534", "/tmp")
    assert "to-stderr" not in out and "to-stderr" in err.splitlines()
    assert "uid=" not in err


def test_numeric_user_and_a_signal_propagate(mm):
    r = mm.sh(f"""
        run --rm --network none -u 1234:4321 {IMAGE} sh -c 'echo "ids=$(id -u):$(id -g)"; kill -TERM $$'
        echo rc=$?
    """)
    v = values(r)
    assert v.get("ids") == "1234:4321", explain(r)
    assert v["rc"] == "143", "a workload killed by SIGTERM ends `mm run` with 128+15"


def test_stdin_with_i_and_exit_code_1(mm):
    r = mm.sh(f"""
        printf 'line1\\nline2' | run --rm -i --network none {IMAGE} sh -c 'cat; echo; echo eof-seen; exit 1'
        echo rc=$?
    """)
    assert r.stdout.startswith("line1\nline2\neof-seen\n"), explain(r)
    assert values(r)["rc"] == "1"


def test_tty_gives_a_terminal(mm):
    r = mm.sh(f"""
        run --rm -t --network none {IMAGE} sh -c 'tty; stty size; echo to-stderr >&2' >out 2>err </dev/null
        echo rc=$?
    """)
    out = mm.out("out").replace("\r", "")
    assert values(r).get("rc") == "0", explain(r) + mm.out("err")
    lines = out.splitlines()
    assert lines[0].startswith("/dev/pts/"), out
    assert lines[1] == "24 80", "no terminal here: the guest gets the default size"
    assert "to-stderr" in lines, "a terminal merges stderr into stdout, as docker run -t does"
