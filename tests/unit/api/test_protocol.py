"""The wire format: requests, responses, errors, versions, limits."""
from __future__ import annotations

import json

import pytest

from vmm.api import protocol
from vmm.api.errors import ApiError, BadArgument, ProtocolError, UnsupportedVersion, WrongState
from vmm.errors import Conflict, MMError


def test_request_roundtrip():
    req = protocol.Request(op="stop", args={"timeout": 3}, id=7)
    line = req.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"v": 1, "id": 7, "op": "stop", "args": {"timeout": 3}}
    assert protocol.decode_request(line) == req


@pytest.mark.parametrize(
    "line, err",
    [
        (b"not json", ProtocolError),
        (b"[1]", ProtocolError),
        (b'{"v": 2, "op": "status"}', UnsupportedVersion),
        (b'{"op": "status"}', UnsupportedVersion),
        (b'{"v": 1, "op": "reboot-the-host"}', ProtocolError),
        (b'{"v": 1, "op": "status", "args": []}', ProtocolError),
        (b'{"v": 1, "op": "status", "args": {"x": 1}}', ProtocolError),
        (b'{"v": 1, "op": "exec", "args": {}}', ProtocolError),
        (b'{"v": 1, "op": "status", "id": "7"}', ProtocolError),
        (b'{"v": 1, "op": "status", "id": true}', ProtocolError),
    ],
)
def test_bad_requests(line, err):
    with pytest.raises(err):
        protocol.decode_request(line)


def test_oversized_line_refused():
    with pytest.raises(ProtocolError):
        protocol.decode_request(b'{"v":1,"op":"status","pad":"' + b"x" * protocol.MAX_LINE + b'"}')


def test_ok_response():
    assert protocol.decode_response(protocol.ok(3, {"state": "running"}), expect_id=3) == {"state": "running"}


def test_response_id_mismatch():
    with pytest.raises(ProtocolError):
        protocol.decode_response(protocol.ok(3), expect_id=4)


def test_typed_error_roundtrip():
    line = protocol.error(5, WrongState("the machine is exited", "start it"))
    obj = json.loads(line)
    assert obj["ok"] is False and obj["error"] == {"type": "WrongState", "message": "the machine is exited",
                                                    "hint": "start it"}
    with pytest.raises(WrongState) as err:
        protocol.decode_response(line)
    assert err.value.hint == "start it"
    assert isinstance(err.value, Conflict) and isinstance(err.value, MMError)


def test_unexpected_exception_is_internal():
    line = protocol.error(1, KeyError("x"))
    assert json.loads(line)["error"]["type"] == "Internal"
    with pytest.raises(ApiError) as err:
        protocol.decode_response(line)
    assert "KeyError" in err.value.message


def test_unknown_error_type_from_newer_worker():
    line = b'{"v":1,"id":1,"ok":false,"error":{"type":"FutureThing","message":"m","hint":""}}'
    with pytest.raises(ApiError) as err:
        protocol.decode_response(line)
    assert type(err.value) is ApiError and err.value.message == "m"


def test_bad_argument_is_usage_error():
    from vmm.errors import UsageError

    assert issubclass(BadArgument, UsageError)
