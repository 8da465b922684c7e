"""`mm exec` and `mm top` against a real guest (`mm run -d mm/default`, where real guests
run: the lab on this PVM host), as a user types them: exit codes and signals, separate
stdout/stderr, env/user/workdir, stdin with and without -i, a TTY (with -t, and -it on a
real pseudo-terminal with a resize and Ctrl-C), 100 MiB of stdout intact, 50 concurrent
execs, Ctrl-C forwarded, a dropped client leaving no orphan, -d, a killed agent reported
(and back for the next exec), and clear errors on paused and stopped machines.

One machine serves the whole file (tests/e2e/exec_machine.py); the last test stops it.
"""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from tests.e2e import exec_machine
from tests.e2e.exec_machine import release_machines, vm  # noqa: F401 (fixtures)
from vmm import paths

PYTHON = str(paths.REPO_ROOT / ".venv" / "bin" / "python")


def _values(text: str) -> dict[str, str]:
    """key=value words printed by a test script."""
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))


def test_exit_codes_signals_and_separate_streams(vm):
    r = vm.sh("""
        $MM exec $VM sh -c 'echo to-out; echo to-err >&2' >out 2>err; echo rc0=$?
        echo "out=$(cat out) err=$(cat err)"
        $MM exec $VM sh -c 'exit 1'; echo rc1=$?
        $MM exec $VM sh -c 'kill -KILL $$'; echo rc137=$?
        $MM exec $VM sh -c 'kill -TERM $$'; echo rc143=$?
        $MM exec $VM no-such-command 2>err127; echo rc127=$? "msg=$(tr ' ' _ <err127)"
    """)
    v = _values(r.stdout)
    assert (v["rc0"], v["rc1"], v["rc137"], v["rc143"], v["rc127"]) == ("0", "1", "137", "143", "127"), r.stdout + r.stderr
    assert (v["out"], v["err"]) == ("to-out", "to-err")
    assert "not_found" in v["msg"] or "No_such_file" in v["msg"], v["msg"]


def test_env_user_and_workdir_are_applied(vm):
    r = vm.sh("""
        printf 'FROM_FILE=yes\\n# comment\\n' > exec.env
        export PASSED=from-host
        $MM exec -e A=1 -e 'B=two words' -e PASSED --env-file exec.env -u nobody -w /tmp $VM \
            sh -c 'echo "a=$A b=$(echo $B | tr " " _) passed=$PASSED file=$FROM_FILE uid=$(id -u) gid=$(id -g) pwd=$(pwd)"'
        $MM exec -u 1234:4321 $VM sh -c 'echo "numeric=$(id -u):$(id -g)"'
        $MM exec $VM sh -c 'echo "default=$(id -u) home=$HOME"'
        $MM exec -w /no/such/dir $VM pwd; echo rc_wd=$?
        $MM exec -u nosuchuser $VM true 2>baduser; echo rc_user=$? "baduser=$(tr ' ' _ <baduser)"
    """)
    v = _values(r.stdout)
    assert (v["a"], v["b"], v["passed"], v["file"]) == ("1", "two_words", "from-host", "yes"), r.stdout + r.stderr
    assert (v["uid"], v["gid"], v["pwd"]) == ("65534", "65534", "/tmp")
    assert v["numeric"] == "1234:4321"
    assert (v["default"], v["home"]) == ("0", "/root")
    assert v["rc_wd"] != "0"
    assert v["rc_user"] != "0" and "nosuchuser" in v["baduser"]


def test_stdin_with_and_without_i(vm):
    r = vm.sh("""
        printf 'line1\\nline2' | $MM exec -i $VM sh -c 'cat; echo; echo eof-seen'
        echo ignored | $MM exec $VM sh -c 'cat; echo read-nothing'
    """)
    assert r.stdout == "line1\nline2\neof-seen\nread-nothing\n", r.stdout + r.stderr


def test_tty_without_a_terminal_here(vm):
    # -t alone: the command gets a PTY (24x80: this side is no terminal), output merged.
    r = vm.sh("""$MM exec -t $VM sh -c 'tty; stty size; echo on-stderr >&2; test -t 0 && echo stdin-is-tty' 2>err
                 echo "stderr_bytes=$(wc -c <err)"
                 $MM exec -it $VM sh; echo rc_it=$?""")
    lines = r.stdout.replace("\r", "").splitlines()
    assert lines[0].startswith("/dev/pts/"), r.stdout + r.stderr
    assert lines[1:4] == ["24 80", "on-stderr", "stdin-is-tty"]
    v = _values(r.stdout)
    assert v["stderr_bytes"] == "0"
    assert v["rc_it"] == "2" and "the input device is not a TTY" in r.stderr


def test_interactive_tty_on_a_real_terminal(vm):
    r = vm.gh.run([PYTHON, "-m", "tests.e2e.exec_pty", exec_machine.MM, vm.name],
                  env={**vm.env, "PYTHONPATH": str(paths.REPO_ROOT)}, cwd=str(paths.REPO_ROOT), timeout=900)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    tail = report.pop("output_tail")
    assert report == {"initial_size": True, "resized": True, "sleeping": True, "ctrl_c_reached_guest": True,
                      "tty": True, "exit_status": 7}, tail


LINE = ",".join(str(i) for i in range(1, 1001)) + "\n"  # 3,893 bytes: frames never line up with it
SIZE = 100 << 20


@pytest.mark.timeout(1000)
def test_100_mib_of_stdout_arrive_intact(vm):
    # `yes` writes fast (a guest under TCG prints numbers slowly); an odd line length makes
    # every 64 KiB frame start at a different place in the line, so a lost, repeated or
    # reordered frame changes the checksum, not only a short count.
    data = (LINE * (SIZE // len(LINE) + 1))[:SIZE].encode()
    r = vm.sh(f"""$MM exec $VM sh -c 'yes "$(seq -s, 1 1000)" | head -c {SIZE}' > stdout.bin; echo rc=$?
                 sha256sum stdout.bin; echo bytes=$(stat -c %s stdout.bin); rm -f stdout.bin""", timeout=900)
    v = _values(r.stdout)
    assert (v.get("rc"), v.get("bytes")) == ("0", str(SIZE)), r.stdout + r.stderr
    assert hashlib.sha256(data).hexdigest() in r.stdout


def test_50_concurrent_execs(vm):
    script = """
import concurrent.futures
from vmm.machines.db import open_control
from vmm.machines.exec import guest_agent
_, agent = guest_agent(open_control(), %r)
def one(i):
    r = agent.exec(["sh", "-c", f"echo out-{i}; echo err-{i} >&2; exit {i %% 7}"])
    return r.exit_code == i %% 7 and r.stdout == f"out-{i}\\n".encode() and r.stderr == f"err-{i}\\n".encode()
with concurrent.futures.ThreadPoolExecutor(50) as pool:
    good = sum(pool.map(one, range(50)))
print("good=%%d" %% good)
""" % vm.name
    r = vm.gh.run([PYTHON, "-c", script], env={**vm.env, "PYTHONPATH": str(paths.REPO_ROOT)}, timeout=1200)
    assert _values(r.stdout).get("good") == "50", r.stdout + r.stderr


def test_signals_to_mm_exec_reach_the_command(vm):
    r = vm.sh("""
        $MM exec $VM sh -c 'trap "echo got-int; exit 9" INT; echo ready; while :; do sleep 1; done' >out 2>&1 &
        P=$!
        for i in $(seq 600); do grep -q ready out && break; sleep 0.2; done
        kill -INT $P; wait $P; echo rc=$?; cat out
    """)
    assert "got-int" in r.stdout and _values(r.stdout)["rc"] == "9", r.stdout + r.stderr


def test_a_dropped_client_leaves_no_orphan(vm):
    r = vm.sh("""
        $MM exec $VM sleep 4242 &
        P=$!
        for i in $(seq 60); do $MM exec $VM ps | grep -q '[s]leep 4242' && break; sleep 1; done
        echo before=$($MM exec $VM ps | grep -c '[s]leep 4242')
        kill -KILL $P
        for i in $(seq 60); do [ "$($MM exec $VM ps | grep -c '[s]leep 4242')" = 0 ] && break; sleep 1; done
        echo after=$($MM exec $VM ps | grep -c '[s]leep 4242')
    """)
    v = _values(r.stdout)
    assert (v["before"], v["after"]) == ("1", "0"), r.stdout + r.stderr


def test_detach_and_top(vm):
    r = vm.sh("""
        $MM exec -d $VM sh -c 'sleep 2; echo done > /tmp/detached; exec sleep 4321'; echo rc_d=$?
        for i in $(seq 60); do $MM exec $VM cat /tmp/detached 2>/dev/null | grep -q done && break; sleep 1; done
        echo "detached=$($MM exec $VM cat /tmp/detached)"
        $MM top $VM > top.txt; echo rc_top=$?
        $MM top --json $VM > top.json
        $MM top $VM -o pid,args > top_o.txt
        cat top.txt; echo ===; cat top.json; echo ===; cat top_o.txt
    """)
    v = _values(r.stdout)
    assert (v["rc_d"], v["detached"], v["rc_top"]) == ("0", "done", "0"), r.stdout + r.stderr
    table, doc, custom = r.stdout.split("===")
    lines = [ln for ln in table.splitlines() if not ln.startswith(("rc_", "detached="))]
    assert lines[0].split()[:2] == ["PID", "USER"], table
    assert any(ln.endswith("sleep 4321") for ln in lines), table
    assert not any(re.search(r"\bps -ef$", ln) for ln in lines), "mm top lists its own ps"
    data = json.loads(doc)
    assert data["Titles"][0] == "PID" and any(p[-1] == "sleep 4321" for p in data["Processes"])
    assert custom.split()[:2] == ["PID", "COMMAND"]


def test_a_killed_agent_is_reported_and_comes_back(vm):
    r = vm.sh("""
        $MM exec $VM sh -c 'kill -KILL $PPID; sleep 30' 2>err; echo rc_session=$?; cat err
        # the agent's listener (the parent of this session's process) dies; init restarts it
        $MM exec $VM sh -c 'kill -KILL $(cut -d" " -f4 /proc/$PPID/stat)'; echo rc_listener=$?
        $MM exec $VM echo back-again
    """)
    v = _values(r.stdout)
    assert v["rc_session"] == "1" and "closed the stream" in r.stdout, r.stdout + r.stderr
    assert "back-again" in r.stdout, r.stdout + r.stderr


def test_paused_and_stopped_machines_are_clear_errors(vm):
    r = vm.sh("""
        $MM pause $VM >/dev/null
        $MM exec $VM true 2>err; echo rc_paused=$?; cat err
        $MM unpause $VM >/dev/null
        $MM exec $VM echo resumed
        $MM stop -t 5 $VM >/dev/null
        $MM exec $VM true 2>err; echo rc_stopped=$?; cat err
        $MM cp $VM:/etc/hostname - 2>err; echo rc_cp=$?; cat err
        echo state=$($MM inspect $VM | grep -o '"state": "[a-z]*"' | tr -d ' "')
    """)
    vm.stopped()
    v = _values(r.stdout)
    assert v["rc_paused"] == "1" and f"machine {vm.name} is paused" in r.stdout and "mm unpause" in r.stdout, r.stdout
    assert "resumed" in r.stdout
    assert v["rc_stopped"] == "1" and f"machine {vm.name} is not running: it is exited" in r.stdout, r.stdout
    assert v["rc_cp"] == "1"
    assert v["state"] == "state:exited"
