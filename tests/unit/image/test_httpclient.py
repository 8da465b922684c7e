"""vmm.image.httpclient against a real HTTP server on 127.0.0.1: keep-alive, redirects, short bodies, TLS checks."""
from __future__ import annotations

import http.server
import json
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

from vmm.image import httpclient as mmhttp


class Server:
    """Routes: /data/N (N bytes), /short (claims 1000, sends 10), /redirect?to=URL, /echo (headers + peer port)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802 - http.server's naming
                path, _, query = self.path.partition("?")
                if path.startswith("/data/"):
                    self._send(200, b"x" * int(path[6:]))
                elif path == "/short":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b"0123456789")
                    self.close_connection = True
                elif path == "/redirect":
                    self.send_response(307)
                    self.send_header("Location", query.removeprefix("to="))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    body = {"headers": dict(self.headers), "port": self.client_address[1], "query": query}
                    self._send(200, json.dumps(body).encode())

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients hang up on purpose here
        if tls:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def client():
    c = mmhttp.Client(timeout=5, headers={"User-Agent": "mm-test"})
    yield c
    c.close()


def test_keep_alive_and_params(server, client):
    first = client.request("GET", f"http://127.0.0.1:{server.port}/echo", params={"scope": "repo:a b"}).json()
    second = client.request("GET", f"http://127.0.0.1:{server.port}/echo").json()
    assert first["port"] == second["port"]  # the same connection carried both
    assert first["query"] == "scope=repo%3Aa+b" and first["headers"]["User-Agent"] == "mm-test"
    assert first["headers"]["Accept-Encoding"] == "identity"  # raw bodies: what digests cover


def test_unread_stream_then_next_request(server, client):
    resp = client.request("GET", f"http://127.0.0.1:{server.port}/data/3000000", stream=True)
    assert len(next(resp.iter_raw(4096))) <= 4096
    resp.close()
    body = client.request("GET", f"http://127.0.0.1:{server.port}/data/10").content
    assert body == b"x" * 10


def test_stream_pieces_add_up(server, client):
    resp = client.request("GET", f"http://127.0.0.1:{server.port}/data/2500000", stream=True)
    assert sum(len(piece) for piece in resp.iter_raw(1 << 20)) == 2500000
    assert client.request("GET", f"http://127.0.0.1:{server.port}/data/5").content == b"xxxxx"


def test_redirect_drops_authorization_across_hosts(server, client):
    here = f"http://127.0.0.1:{server.port}"
    same = client.request("GET", f"{here}/redirect?to=/echo", headers={"Authorization": "Bearer t"}).json()
    assert same["headers"].get("Authorization") == "Bearer t"
    other = f"http://localhost:{server.port}/echo"  # another host name: a CDN, as far as we know
    moved = client.request("GET", f"{here}/redirect?to={other}", headers={"Authorization": "Bearer t"}).json()
    assert "Authorization" not in moved["headers"]


def test_short_body_is_a_transport_error(server, client):
    resp = client.request("GET", f"http://127.0.0.1:{server.port}/short", stream=True)
    with pytest.raises(mmhttp.TransportError, match="short"):
        b"".join(resp.iter_raw())


def test_refused_is_a_connect_error(client):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(mmhttp.ConnectError):
            client.request("GET", f"http://127.0.0.1:{port}/")


@pytest.fixture
def tls_server(tmp_path):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate; yields (server, cert path)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv = Server(tls=ctx)
    yield srv, cert
    srv.close()


def test_tls_certificate_is_checked(tls_server, client):
    srv, _ = tls_server
    with pytest.raises(mmhttp.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.request("GET", f"https://127.0.0.1:{srv.port}/echo")


def test_tls_trusted_certificate(tls_server, monkeypatch):
    srv, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # OpenSSL's default verify paths honour it
    c = mmhttp.Client(timeout=5)
    try:
        assert c.request("GET", f"https://127.0.0.1:{srv.port}/data/7").content == b"x" * 7
    finally:
        c.close()
