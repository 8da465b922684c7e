"""Getting the VMM into its cgroup (vmm.jail.cgroups.MachineCgroup.place / fork_into):
v1 leaves the move to the VMM (its `tasks` files), v2 attaches it unless it was born
inside, and a real fork into a real cgroup v2 directory (clone3 with CLONE_INTO_CGROUP,
vmm.jail.libc.fork_into_cgroup) gives a child that is in it and a sound Python process.

The real fork needs root and a cgroup2 mount: this host's hybrid layout has one without
controllers (/sys/fs/cgroup/unified), where a directory of our own is enough."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from vmm.jail.cgroups import CONTROLLERS, MachineCgroup, _mounts


def _plain(tmp_path, version: int) -> MachineCgroup:
    dirs = {c: tmp_path if version == 2 else tmp_path / c for c in CONTROLLERS}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    return MachineCgroup(version, dirs)


def test_on_v1_the_vmm_joins_itself_through_its_tasks_files(tmp_path):
    cg = _plain(tmp_path, 1)
    assert cg.place(4242) == [str(tmp_path / c / "tasks") for c in CONTROLLERS]
    assert not any((tmp_path / c / "tasks").exists() for c in CONTROLLERS)  # nothing written for it
    assert cg.fork_into() == (None, "cgroup v1")


def test_on_v2_it_is_attached_unless_it_was_born_inside(tmp_path):
    cg = _plain(tmp_path, 2)
    assert cg.place(4242, born_inside=True) == [] and not (tmp_path / "cgroup.procs").exists()
    assert cg.place(4242) == [] and (tmp_path / "cgroup.procs").read_text() == "4242"


def in_a_child(fn) -> dict:
    """fn() in a forked (single-threaded) child; what it returned, as JSON."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_a_directory_that_is_no_cgroup_is_refused_and_nothing_is_forked(tmp_path):
    cg = _plain(tmp_path, 2)

    def attempt():
        pid, why = cg.fork_into()
        if pid == 0:
            os._exit(3)  # must not happen: no child may exist
        return {"pid": pid, "why": why}

    assert in_a_child(attempt) == {"pid": None, "why": "clone3 into the cgroup refused (Bad file descriptor)"}


def _cgroup2_mount() -> Path | None:
    for point, fstype, _ in _mounts():
        if fstype == "cgroup2" and os.access(point, os.W_OK):
            return Path(point)
    return None


@pytest.fixture
def v2_dir():
    if os.geteuid() != 0:
        pytest.skip("making a cgroup needs root")
    mount = _cgroup2_mount()
    if mount is None:
        pytest.skip("no writable cgroup2 mount on this host")
    d = mount / f"mm-test-fork-into-{os.getpid()}"
    d.mkdir()
    yield d
    d.rmdir()


def test_a_child_forked_into_a_v2_cgroup_is_born_there_and_is_a_sound_process(v2_dir):
    cg = MachineCgroup(2, {c: v2_dir for c in CONTROLLERS})
    relative = "/" + str(v2_dir.relative_to(_cgroup2_mount()))

    def attempt():
        from vmm.jail import libc

        r, w = os.pipe()
        pid, why = cg.fork_into()
        if pid == 0:  # the VMM-to-be: where it is, who glibc thinks it is, whether threads work
            seen = []
            t = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
            t.start()
            t.join()
            facts = {"cgroup": [ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::")],
                     "tid_slot": bool(libc._tid_slot()), "thread": bool(seen) and seen[0] != os.getpid()}
            os.write(w, json.dumps(facts).encode())
            os._exit(7)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            facts = json.loads(f.read() or b"{}")
        _, status = os.waitpid(pid, 0)
        return {"why": why, "status": os.waitstatus_to_exitcode(status), **facts}

    got = in_a_child(attempt)
    assert got == {"why": "", "status": 7, "cgroup": [f"0::{relative}"], "tid_slot": True, "thread": True}, got
