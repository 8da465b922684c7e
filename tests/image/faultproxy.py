"""An HTTP reverse proxy on 127.0.0.1 in front of a real registry that fails on purpose.

Each `Fault` names a path fragment (a digest, `/manifests/`), what to do and how many
times: answer a status (503, 429, ...), reset the connection before answering
(`reset`), or send the status line, the headers and half the body, then close (`cut`);
a status answer may carry extra headers (Retry-After).
Requests no fault claims are forwarded unchanged (Range included). Every request is
logged, so a test can see how many attempts a pull made and what they asked for.
"""
from __future__ import annotations

import http.client
import http.server
import socket
import struct
import threading
from dataclasses import dataclass

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


@dataclass
class Fault:
    match: str           # a substring of the request path
    action: str          # "reset", "cut", or an HTTP status code as text ("503")
    times: int = 1       # how many matching requests fail; -1: every one
    headers: dict[str, str] | None = None  # extra headers of a status answer (Retry-After)

    def claims(self, path: str) -> bool:
        return self.match in path and self.times != 0


@dataclass
class Logged:
    method: str
    path: str
    range: str | None
    action: str          # the fault's action, or "forwarded"


class FaultProxy:
    """Listens on 127.0.0.1:`port` and forwards to `upstream` ("127.0.0.1:PORT")."""

    def __init__(self, upstream: str, faults: list[Fault] | None = None) -> None:
        self.upstream, self.faults, self.log = upstream, list(faults or []), []
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real registry: clients reuse connections

            def do_GET(self):  # noqa: N802 - http.server's naming
                proxy._handle(self)

            do_HEAD = do_GET

            def finish(self):
                try:
                    super().finish()
                except OSError:  # we reset the socket ourselves
                    pass

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # resets are the point; a traceback per request is noise

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self, fragment: str) -> list[Logged]:
        return [entry for entry in self.log if fragment in entry.path]

    # -- per request -------------------------------------------------------------------
    def _claim(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.claims(path):
                    fault.times -= 1 if fault.times > 0 else 0
                    return fault
        return None

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        fault = self._claim(req.path)
        action = fault.action if fault else "forwarded"
        self.log.append(Logged(req.command, req.path, req.headers.get("Range"), action))
        if action == "reset":
            _reset(req)
        elif action.isdigit():
            body = f'{{"errors":[{{"code":"UNAVAILABLE","message":"fault proxy {action}"}}]}}'.encode()
            req.send_response(int(action))
            for key, value in (fault.headers or {}).items():
                req.send_header(key, value)
            req.send_header("Content-Type", "application/json")
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            req.wfile.write(body)
        else:
            self._forward(req, cut=action == "cut")

    def _forward(self, req: http.server.BaseHTTPRequestHandler, cut: bool) -> None:
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        conn.request(req.command, req.path, headers=headers)
        resp = conn.getresponse()
        try:
            length = int(resp.getheader("Content-Length") or 0)
            req.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    req.send_header(key, value)
            req.end_headers()
            left = length // 2 if cut else length
            while left > 0 and (chunk := resp.read(min(left, 65536))):
                req.wfile.write(chunk)
                left -= len(chunk)
            req.wfile.flush()
            if cut:
                # A FIN, not an RST: the client reads every byte sent, then finds the body short,
                # so how far a resume must start is exact.
                req.connection.shutdown(socket.SHUT_WR)
                req.close_connection = True
        finally:
            conn.close()


def _reset(req: http.server.BaseHTTPRequestHandler) -> None:
    """Close the client's connection with an RST (SO_LINGER 0), as a crashing server would."""
    req.wfile.flush()
    req.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    req.rfile.close()  # the socket's fd closes only once its file objects have let go
    req.connection.close()
    req.close_connection = True
