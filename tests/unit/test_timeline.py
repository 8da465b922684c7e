"""vmm.timeline: off by default, lines of `<ns> <pid> <phase>` when MM_TIMELINE is set,
and a forked child writes through its own fd."""
import os
import time

from vmm import timeline


def _lines(path):
    return [line.split(" ", 2) for line in path.read_text().splitlines()]


def test_off_by_default_writes_nothing(monkeypatch, tmp_path, capfd):
    monkeypatch.delenv("MM_TIMELINE", raising=False)
    timeline.mark("nothing")
    assert capfd.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []


def test_marks_are_monotonic_lines_with_pid(monkeypatch, tmp_path):
    path = tmp_path / "tl"
    monkeypatch.setenv("MM_TIMELINE", str(path))
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    timeline.mark("a")
    timeline.mark("b c")
    rows = _lines(path)
    assert [r[2] for r in rows] == ["a", "b c"]
    assert all(int(r[1]) == os.getpid() for r in rows)
    assert before <= int(rows[0][0]) <= int(rows[1][0])


def test_a_forked_child_opens_its_own_fd(monkeypatch, tmp_path):
    """The worker's supervisor marks, forks the VMM and closes every fd in it: the VMM
    must not write to the number its parent had open."""
    path = tmp_path / "tl"
    monkeypatch.setenv("MM_TIMELINE", str(path))
    timeline.mark("parent")
    pid = os.fork()
    if pid == 0:
        os.closerange(3, 1 << 16)  # as the supervisor does for the VMM
        timeline.mark("child")
        os._exit(0)
    os.waitpid(pid, 0)
    rows = _lines(path)
    assert [r[2] for r in rows] == ["parent", "child"]
    assert int(rows[1][1]) == pid


def test_an_unopenable_file_falls_back_to_stderr(monkeypatch, tmp_path, capfd):
    monkeypatch.setenv("MM_TIMELINE", str(tmp_path / "missing-dir" / "tl"))
    monkeypatch.setattr(timeline, "_fd", None)
    timeline.mark("here")
    assert capfd.readouterr().err.startswith("timeline ")
