"""A registry v2 API client: manifests and blobs, bearer and basic auth, retries, resume.

Plain HTTP is used only for registries on localhost / 127.0.0.0/8 / ::1 (as Docker
does) or listed in MM_INSECURE_REGISTRIES (comma-separated `host` or `host:port`);
everything else is HTTPS with certificate checks. A 401 is answered by the challenge
in WWW-Authenticate: `Bearer` fetches a token from the realm (with our credentials
when we have some), `Basic` resends with them. Blob downloads resume from the
partial file with a Range request after a dropped connection or a killed process.
Transient failures (RETRY_STATUS answers, broken connections) are tried ATTEMPTS times
with doubling backoff (or the server's Retry-After, capped); what still fails raises
RegistryUnavailable (or RegistryError "cannot reach" when nothing answers at all).
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from vmm.image import auth, manifest as mf
from vmm.image.errors import AuthError, DigestMismatch, ImageNotFound, RegistryError, RegistryUnavailable
from vmm.image.reference import Reference
from vmm.image.store import CHUNK, Store, sha256_hex

ATTEMPTS = 4
BACKOFF = 0.25
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 10.0  # a server asking for longer is not having a transient problem: we give up sooner


def _delay(failures: int, retry_after: str | None) -> float:
    """The backoff before the next try, for every retry here: doubling from BACKOFF, or
    the server's Retry-After (in seconds; the HTTP-date form is not used by registries)
    when longer, capped."""
    delay = BACKOFF * 2 ** failures
    if retry_after and retry_after.strip().isdigit():
        delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
    return delay


def is_insecure(host: str) -> bool:
    """True when `host` (maybe with :port) may be spoken to over plain HTTP."""
    listed = {h.strip() for h in os.environ.get("MM_INSECURE_REGISTRIES", "").split(",") if h.strip()}
    bare = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    bare = bare.strip("[]")
    if host in listed or bare in listed or bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """Talks to one repository of one registry; thread-safe (layers download concurrently)."""

    def __init__(self, ref: Reference, timeout: float = 30.0) -> None:
        self.ref = ref
        scheme = "http" if is_insecure(ref.api_host) else "https"
        self.base = f"{scheme}://{ref.api_host}/v2/{ref.repository}"
        # Plain HTTP needs no CA bundle; loading it costs ~60 ms per pull. Proxies come from the
        # environment (HTTPS_PROXY, NO_PROXY...), httpx's default.
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=True,
                                 headers={"User-Agent": "micromachines"}, verify=scheme == "https")
        self._auth_header: str | None = None
        self._creds = auth.credentials(ref.registry)

    def close(self) -> None:
        self.http.close()

    # -- transport with auth and retries --------------------------------------------------
    def _send(self, method: str, url: str, headers: dict[str, str], stream: bool) -> httpx.Response:
        """One request with up to ATTEMPTS tries against transient failures (backoff doubling
        from BACKOFF); one 401 is answered with authentication on whichever try it comes, and
        that round does not use up a try."""
        failures, challenged = 0, False
        while True:
            hdrs = dict(headers)
            if self._auth_header:
                hdrs["Authorization"] = self._auth_header
            try:
                req = self.http.build_request(method, url, headers=hdrs)
                resp = self.http.send(req, stream=stream)
            except httpx.TransportError as exc:
                if failures == ATTEMPTS - 1:
                    raise self._unreachable(exc) from None
                time.sleep(_delay(failures, None))
                failures += 1
                continue
            if resp.status_code == 401 and not challenged:
                challenged = True
                challenge = resp.headers.get("www-authenticate", "")
                resp.close()
                self._authenticate(challenge)
                continue
            if resp.status_code in RETRY_STATUS and failures < ATTEMPTS - 1:
                resp.close()
                time.sleep(_delay(failures, resp.headers.get("retry-after")))
                failures += 1
                continue
            return resp

    def _unreachable(self, exc: httpx.TransportError) -> RegistryError:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return RegistryError(f"cannot reach {self.ref.api_host}: {exc}",
                                 "check the registry address and that it is running")
        # Connected, then the connection broke or timed out: a struggling server, not a wrong address.
        return RegistryUnavailable(f"the connection to {self.ref.api_host} broke (gave up after {ATTEMPTS} "
                                   f"attempts): {exc}")

    def _authenticate(self, challenge: str) -> None:
        scheme, params = auth.parse_challenge(challenge)
        if scheme == "basic":
            if not self._creds:
                raise AuthError(f"{self.ref.api_host} needs a user name and password")
            self._auth_header = auth.basic_header(self._creds)
        elif scheme == "bearer" and params.get("realm"):
            self._auth_header = "Bearer " + self._token(params)
        else:
            raise AuthError(f"{self.ref.api_host} asked for unsupported authentication {challenge!r}")

    def _token(self, params: dict[str, str]) -> str:
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {"Authorization": auth.basic_header(self._creds)} if self._creds else {}
        try:
            resp = self.http.get(params["realm"], params=query, headers=headers)
        except httpx.TransportError as exc:
            raise AuthError(f"cannot reach the token server {params['realm']}: {exc}") from None
        if resp.status_code in (401, 403):
            raise AuthError(f"the token server {params['realm']} refused us ({resp.status_code})")
        if resp.status_code != 200:
            raise AuthError(f"the token server {params['realm']} answered {resp.status_code}")
        body = resp.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise AuthError(f"the token server {params['realm']} sent no token")
        return token

    def _check(self, resp: httpx.Response, what: str) -> None:
        if resp.status_code < 300:
            return
        resp.read()
        resp.close()
        if resp.status_code in (401, 403):
            raise AuthError(f"{self.ref.api_host} denied access to {what} ({resp.status_code})")
        if resp.status_code == 404:
            raise ImageNotFound(f"{what} not found on {self.ref.api_host}",
                                "check the name and tag; `mm image ls` lists local images")
        if resp.status_code in RETRY_STATUS:  # _send already retried it ATTEMPTS times
            raise RegistryUnavailable(f"{self.ref.api_host} answered {resp.status_code} for {what} "
                                      f"(gave up after {ATTEMPTS} attempts): {resp.text[:200]}")
        raise RegistryError(f"{self.ref.api_host} answered {resp.status_code} for {what}: {resp.text[:200]}")

    # -- manifests ------------------------------------------------------------------------
    def manifest(self, selector: str) -> tuple[bytes, str, str]:
        """(bytes, media type, digest) of the manifest or index named by tag or digest."""
        resp = self._send("GET", f"{self.base}/manifests/{selector}", {"Accept": mf.ACCEPT}, stream=False)
        self._check(resp, f"{self.ref.name}:{selector}" if not selector.startswith("sha256:") else f"{self.ref.name}@{selector}")
        data = resp.content
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if selector.startswith("sha256:") and selector != digest:
            raise DigestMismatch(f"manifest {selector} from {self.ref.api_host} hashes to {digest}")
        kind = resp.headers.get("content-type", "").split(";")[0].strip()
        return data, kind, digest

    # -- blobs ----------------------------------------------------------------------------
    def fetch_blob(self, store: Store, desc: dict[str, Any], progress: Callable[[int], None] | None = None) -> None:
        """Download `desc` into the store (verified), resuming a partial file if one exists.

        `progress(n)` is told the number of bytes of the blob present so far.
        """
        digest, size = desc["digest"], desc["size"]
        with store.lock(sha256_hex(digest)):
            if store.has_blob(digest):
                if progress:
                    progress(size)
                return
            partial = store.partial_path(digest)
            for attempt in range(ATTEMPTS):
                try:
                    hexdigest, total = self._download(digest, size, partial, progress)
                    break
                except (httpx.TransportError, _Retry) as exc:
                    if attempt == ATTEMPTS - 1:
                        raise RegistryUnavailable(f"downloading {digest} failed after {ATTEMPTS} attempts: {exc}",
                                                  "run the pull again: it resumes where it stopped") from None
                    time.sleep(_delay(attempt, None))
            store.finish_blob(partial, digest, hexdigest, total, size)

    def _download(self, digest: str, size: int, partial: Path, progress: Callable[[int], None] | None) -> tuple[str, int]:
        hasher, offset = hashlib.sha256(), 0
        if partial.exists():
            with open(partial, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    hasher.update(chunk)
                    offset += len(chunk)
        if offset > size:
            partial.unlink()
            hasher, offset = hashlib.sha256(), 0
        headers = {"Range": f"bytes={offset}-"} if 0 < offset < size else {}
        if offset == size:
            return hasher.hexdigest(), offset
        resp = self._send("GET", f"{self.base}/blobs/{digest}", headers, stream=True)
        try:
            if resp.status_code == 200 and offset:
                hasher, offset = hashlib.sha256(), 0  # the server ignored Range: start over
            elif resp.status_code == 416:
                partial.unlink(missing_ok=True)
                raise _Retry("the server refused the resume range")
            self._check(resp, f"blob {digest}")
            if progress:
                progress(offset)
            # Raw: a blob's bytes are what the digest covers. No chunk size: httpx would hold up
            # to that many received bytes back and lose them when the connection broke, so a
            # resume would fetch them again. Its pieces (~64 KiB reads) go through a 1 MiB write
            # buffer, which closing the file flushes on any error: nothing received is lost.
            with open(partial, "r+b" if offset else "wb", buffering=CHUNK) as out:
                out.seek(offset)
                out.truncate()
                for chunk in resp.iter_raw():
                    offset += len(chunk)
                    if offset > size:
                        out.close()
                        partial.unlink(missing_ok=True)
                        raise DigestMismatch(f"blob {digest} is larger than its declared {size} bytes")
                    out.write(chunk)
                    hasher.update(chunk)
                    if progress:
                        progress(offset)
        finally:
            resp.close()
        return hasher.hexdigest(), offset


class _Retry(Exception):
    """A condition worth another attempt (internal)."""
