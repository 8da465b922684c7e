"""The VMM -> supervisor channel: messages, fds, and the checks on hostile requests."""
from __future__ import annotations

import os
import threading

import pytest

from vmm.jail import channel
from vmm.machines import InvalidTransition, State


def test_messages_and_fds_cross():
    sup, vmm = channel.pair()
    r, w = os.pipe()
    channel.send(vmm, {"op": "listener"}, fd=w)
    message, fds = channel.recv(sup)
    assert message == {"op": "listener"} and len(fds) == 1
    os.write(fds[0], b"!")
    assert os.read(r, 1) == b"!"
    vmm.send(b"not json")
    assert channel.recv(sup)[0] == {"op": "invalid"}
    vmm.close()
    with pytest.raises(channel.ChannelClosed):
        channel.recv(sup)
    for fd in (r, w, fds[0]):
        os.close(fd)


def _serve_once(sock, reply):
    message, _ = channel.recv(sock)
    channel.send(sock, reply(message))


def test_store_proxy_asks_and_raises_what_the_store_said():
    sup, vmm = channel.pair()
    proxy = channel.StoreProxy(vmm)
    seen = []
    t = threading.Thread(target=_serve_once, args=(sup, lambda m: seen.append(m) or {"ok": True}))
    t.start()
    proxy.transition("ignored-id", State.EXITED, generation=99, exit_code=3, exit_reason="poweroff")
    t.join()
    assert seen == [{"op": "transition", "state": "exited", "fields": {"exit_code": 3, "exit_reason": "poweroff"}}]
    refusal = {"ok": False, "error": {"type": "InvalidTransition", "name": "m", "current": "exited",
                                      "wanted": "running"}}
    t = threading.Thread(target=_serve_once, args=(sup, lambda m: refusal))
    t.start()
    with pytest.raises(InvalidTransition) as err:
        proxy.transition("x", State.RUNNING)
    t.join()
    assert (err.value.current, err.value.wanted) == ("exited", "running")


def test_the_supervisor_accepts_only_what_a_vmm_may_record():
    target, fields = channel.check_transition(
        {"state": "exited", "fields": {"exit_code": 0, "error": "x" * 10000, "finished_at": 1.5}})
    assert target is State.EXITED and len(fields["error"]) == channel.MAX_TEXT
    for bad in ({"state": "dead", "fields": {}}, {"state": "starting", "fields": {}},
                {"state": "bogus", "fields": {}}, {"state": "running", "fields": []},
                {"state": "running", "fields": {"worker_pid": 1}}, {"state": "running", "fields": {"config": {}}},
                {"state": "exited", "fields": {"exit_code": "0"}}, {"state": "exited", "fields": {"exit_code": True}}):
        with pytest.raises(ValueError):
            channel.check_transition(bad)
