"""A small HTTP/1.1 client on the standard library, for the registry client.

It does what a registry pull needs and no more: keep-alive connections per thread (the
layers download in parallel), redirects (registries send blob GETs to a CDN or S3; the
Authorization header is dropped when the host changes, as Docker does, because presigned
URLs refuse it), timeouts, TLS with the system's CA store, raw bodies (we ask for
`identity`: a blob's bytes are what its digest covers) read one receive at a time, so a
broken connection loses nothing already received.

Proxies come from the environment as curl, Go and httpx take them: `https_proxy`,
`http_proxy`, `all_proxy` (either case; an http:// proxy, with user:password if given;
HTTPS goes through a CONNECT tunnel) and `no_proxy` (host suffixes, host:port, CIDR, `*`).
Loopback hosts are always reached directly, as Go's (so Docker's and skopeo's) rule has it.

Why not httpx: importing it and making a client took 60-260 ms per `mm image pull` on the
development host (2 shared cores, load 3-5), on top of the standard library's share,
while pulling the whole 100 MB benchmark image from a local registry takes ~0.2 s; the
import of vmm.image.registry went from 102 to 48 ms (best of 5) with this module.
"""
from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import threading
import urllib.parse
from typing import Any, Iterator

REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 10
LOOPBACK_DIRECT = True  # tests turn it off to put a proxy in front of a server on 127.0.0.1


class TransportError(Exception):
    """The connection failed: refused, reset, timed out, or the body ended short."""


class ConnectError(TransportError):
    """No connection could be made (refused, no route, name not found, TLS handshake)."""


class Response:
    """One response; `stream=False` ones are read whole (and the connection freed) at once."""

    def __init__(self, raw: http.client.HTTPResponse, conn: http.client.HTTPConnection, url: str) -> None:
        self.raw, self.conn, self.url = raw, conn, url
        self.status_code, self.headers = raw.status, raw.headers
        self._content: bytes | None = None

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = b"".join(self.iter_raw())
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def read(self) -> bytes:
        return self.content

    def iter_raw(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The body as it arrives, at most `size` bytes per piece (one receive each)."""
        try:
            while chunk := self.raw.read1(size):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        if self.raw.length:  # ended before Content-Length said (read1 returns b"" at a FIN)
            self.conn.close()
            raise TransportError(f"the body ended {self.raw.length} bytes short")
        self.raw.close()  # read1 does not mark a finished body done; the connection is free again

    def close(self) -> None:
        if not self.raw.isclosed():
            self.conn.close()  # unread body: the connection cannot carry another request


class Client:
    """Thread-safe: each thread keeps its own connection per scheme://host:port."""

    def __init__(self, timeout: float = 30.0, connect_timeout: float = 10.0,
                 headers: dict[str, str] | None = None) -> None:
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.headers = dict(headers or {})
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._tls = None

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    def request(self, method: str, url: str, headers: dict[str, str] | None = None,
                params: dict[str, str] | None = None, stream: bool = False) -> Response:
        if params:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        hdrs = {**self.headers, **(headers or {})}
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._once(method, url, hdrs)
            location = resp.headers.get("location")
            if resp.status_code not in REDIRECTS or not location:
                if not stream:
                    resp.content  # noqa: B018 - reads the body, freeing the connection
                return resp
            if (resp.raw.length or 0) <= 65536:
                resp.content  # noqa: B018 - a short body: read it and keep the connection
            resp.close()
            target = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(target).netloc != urllib.parse.urlsplit(url).netloc:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            method = "GET" if resp.status_code == 303 else method
            url = target
        raise TransportError(f"more than {MAX_REDIRECTS} redirects from {url}")

    def _once(self, method: str, url: str, headers: dict[str, str]) -> Response:
        parts = urllib.parse.urlsplit(url)
        slot = self._slot(parts.scheme, parts.netloc)
        conn, last = slot
        if last is not None and not last.raw.isclosed():
            conn.close()  # the previous response was not read to its end: start on a fresh socket
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        via = getattr(conn, "mm_proxy_headers", None)
        if via is not None:  # plain HTTP through a proxy: an absolute URI, and the proxy's own headers
            path, headers = f"{parts.scheme}://{parts.netloc}{path}", {**headers, **via}
        try:
            if conn.sock is None:
                conn.connect()
                conn.sock.settimeout(self.timeout)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ConnectError(f"{parts.netloc}: {exc}") from None
        try:
            conn.request(method, path, headers=headers)
            raw = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise TransportError(f"{type(exc).__name__}: {exc}") from None
        slot[1] = resp = Response(raw, conn, url)
        return resp

    def _slot(self, scheme: str, netloc: str) -> list:
        """This thread's [connection, its last response] for scheme://netloc."""
        pool = self._local.__dict__.setdefault("pool", {})
        slot = pool.get((scheme, netloc))
        if slot is None:
            if scheme not in ("http", "https"):
                raise ConnectError(f"unsupported URL scheme {scheme!r}")
            proxy = proxy_for(scheme, netloc)
            conn = self._connect_to(scheme, netloc, proxy)
            slot = pool[(scheme, netloc)] = [conn, None]
            with self._lock:
                self._all.append(conn)
        return slot

    def _connect_to(self, scheme: str, netloc: str, proxy: urllib.parse.SplitResult | None):
        """A connection to `netloc`, directly or through `proxy` (CONNECT tunnel for HTTPS)."""
        if proxy is None:
            if scheme == "https":
                return http.client.HTTPSConnection(netloc, timeout=self.connect_timeout, context=self._tls_context())
            return http.client.HTTPConnection(netloc, timeout=self.connect_timeout)
        auth = {}
        if proxy.username:
            user = f"{urllib.parse.unquote(proxy.username)}:{urllib.parse.unquote(proxy.password or '')}"
            auth["Proxy-Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        where = proxy.netloc.rpartition("@")[2]
        if scheme == "https":
            conn = http.client.HTTPSConnection(where, timeout=self.connect_timeout, context=self._tls_context())
            conn.set_tunnel(netloc, headers=auth)  # TLS to `netloc` inside the CONNECT tunnel
            return conn
        conn = http.client.HTTPConnection(where, timeout=self.connect_timeout)
        conn.mm_proxy_headers = auth  # sent with each request on this connection only
        return conn

    def _tls_context(self):
        """The system CA store (ssl is imported only for HTTPS: plain-HTTP pulls skip its cost)."""
        if self._tls is None:
            import ssl

            ctx = ssl.create_default_context()
            if not ctx.cert_store_stats().get("x509_ca"):
                try:
                    import certifi

                    ctx.load_verify_locations(certifi.where())
                except ImportError:
                    pass
            self._tls = ctx
        return self._tls


def proxy_for(scheme: str, netloc: str) -> urllib.parse.SplitResult | None:
    """The proxy the environment names for scheme://netloc, or None for a direct connection."""
    env = {k.lower(): v for k, v in os.environ.items() if k.lower().endswith("_proxy") and v}
    url = env.get(f"{scheme}_proxy") or env.get("all_proxy")
    if not url:
        return None
    parts = urllib.parse.urlsplit(f"//{netloc}")
    host, port = (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)
    if _bypassed(host, port, env.get("no_proxy", "")):
        return None
    proxy = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if proxy.scheme != "http" or not proxy.hostname:
        raise ConnectError(f"unsupported proxy {url!r} in the environment: only http:// proxies are supported")
    return proxy


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if LOOPBACK_DIRECT and (host == "localhost" or (ip is not None and ip.is_loopback)):
        return True
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry:
            try:
                if ip is not None and ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name, _, want = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if want and (not want.isdigit() or int(want) != port):
            continue
        name = name.removeprefix("*").removeprefix(".").strip("[]")
        if host == name or host.endswith("." + name):
            return True
    return False
