"""vmm.image.httpclient against a real HTTP server on 127.0.0.1: keep-alive, redirects, short bodies, TLS checks."""
from __future__ import annotations

import base64
import http.server
import json
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.parse

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


class ForwardProxy:
    """A forward proxy on 127.0.0.1: CONNECT tunnels and absolute-URI GETs; logs what it was asked."""

    def __init__(self) -> None:
        import http.client
        import select

        self.log: list[tuple[str, str, str | None]] = []
        log = self.log

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_CONNECT(self):  # noqa: N802 - http.server's naming
                log.append(("CONNECT", self.path, self.headers.get("Proxy-Authorization")))
                host, _, port = self.path.rpartition(":")
                upstream = socket.create_connection((host, int(port)))
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                ends = [self.connection, upstream]
                while True:
                    readable, _, _ = select.select(ends, [], [], 5)
                    if not readable:
                        break
                    for src in readable:
                        data = src.recv(65536)
                        if not data:
                            upstream.close()
                            self.close_connection = True
                            return
                        (upstream if src is self.connection else self.connection).sendall(data)

            def do_GET(self):  # noqa: N802
                log.append(("GET", self.path, self.headers.get("Proxy-Authorization")))
                target = urllib.parse.urlsplit(self.path)
                conn = http.client.HTTPConnection(target.netloc)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-authorization"}
                conn.request("GET", target.path + (f"?{target.query}" if target.query else ""), headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                conn.close()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def forward_proxy(monkeypatch):
    monkeypatch.setattr(mmhttp, "LOOPBACK_DIRECT", False)  # the servers here are all on 127.0.0.1
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    fp = ForwardProxy()
    yield fp
    fp.close()


PROXY_AUTH = "Basic " + base64.b64encode(b"u:p w").decode()


def test_http_through_proxy(server, forward_proxy, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://u:p%20w@127.0.0.1:{forward_proxy.port}")
    c = mmhttp.Client(timeout=5)
    try:
        echo = c.request("GET", f"http://127.0.0.1:{server.port}/echo?x=1").json()
    finally:
        c.close()
    assert forward_proxy.log == [("GET", f"http://127.0.0.1:{server.port}/echo?x=1", PROXY_AUTH)]
    assert echo["query"] == "x=1" and "Proxy-Authorization" not in echo["headers"]


def test_https_through_connect_tunnel(tls_server, forward_proxy, monkeypatch):
    srv, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("https_proxy", f"u:p%20w@127.0.0.1:{forward_proxy.port}")  # no scheme: http:// assumed
    c = mmhttp.Client(timeout=5)
    try:
        assert c.request("GET", f"https://127.0.0.1:{srv.port}/data/9").content == b"x" * 9
        assert c.request("GET", f"https://127.0.0.1:{srv.port}/data/3").content == b"xxx"  # same tunnel
    finally:
        c.close()
    assert forward_proxy.log == [("CONNECT", f"127.0.0.1:{srv.port}", PROXY_AUTH)]


@pytest.mark.parametrize("no_proxy, netloc, direct", [
    ("", "registry.example.com", False),
    ("example.com", "registry.example.com", True),
    (".example.com", "example.com", True),
    ("*.example.com", "a.example.com:5000", True),
    ("example.org, other", "registry.example.com", False),
    ("reg.example.com:5000", "reg.example.com:5000", True),
    ("reg.example.com:5000", "reg.example.com", False),
    ("10.0.0.0/8", "10.1.2.3:5000", True),
    ("*", "anything", True),
])
def test_no_proxy(monkeypatch, no_proxy, netloc, direct):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    assert (mmhttp.proxy_for("https", netloc) is None) == direct


def test_loopback_is_direct_and_socks_refused(monkeypatch):
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    assert mmhttp.proxy_for("http", "127.0.0.1:5000") is None and mmhttp.proxy_for("https", "localhost") is None
    with pytest.raises(mmhttp.ConnectError, match="only http:// proxies"):
        mmhttp.proxy_for("https", "registry.example.com")
