"""HTTP client for a PyPI-compatible index through the JSON simple API (PEP 691).

Standard library only (``http.client``), one keep-alive connection per thread.
Every way a request can go wrong ends in an :class:`UpstreamFault` subclass
that names the kind of fault; nothing else escapes.  The index address comes
from the caller; this module names no host.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import ssl
import threading
import zlib
from typing import Protocol
from urllib.parse import quote, urlsplit

from piwheels import __version__
from piwheels.upstream.faults import (
    ConnectionFailed,
    HTTPFault,
    InvalidResponse,
    RateLimited,
    ServerError,
    StalePage,
    TruncatedBody,
    UpstreamFault,
    UpstreamTimeout,
)
from piwheels.upstream.pages import (
    JSON_TYPE,
    ProjectInfo,
    ProjectPage,
    RootIndex,
    parse_info,
    parse_project,
    parse_root,
)

log = logging.getLogger("piwheels.upstream")

SERIAL_HEADER = "X-PyPI-Last-Serial"


class UpstreamClient(Protocol):
    """What the follower needs from an upstream: the HTTP client or a local folder."""

    def get_root(self, *, etag: str | None = None) -> RootIndex | None:
        """The root listing, or None if it still matches *etag*."""
        ...

    def get_project(self, name: str, *, min_serial: int | None = None) -> ProjectPage | None:
        """Canonical *name*'s page (serial at least *min_serial*), or None if it is gone."""
        ...

    def get_info(self, name: str) -> ProjectInfo | None:
        """Display name and summary, or None where the upstream does not offer them."""
        ...

    def close(self) -> None:
        """Drop connections and caches."""
        ...


class _Response:
    __slots__ = ("body", "headers", "status", "url")

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes, url: str):
        self.status = status
        self.headers = headers
        self.body = body
        self.url = url


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        # An HTTP date is allowed too; treat it as "a while" rather than parse it.
        return 60.0


class SimpleClient:
    """Client for the JSON simple API at *index_url* (e.g. ``<base>/simple/``).

    *json_url* is an optional template for the project JSON, with ``{name}``
    standing for the canonical name (e.g. ``<base>/pypi/{name}/json``).
    *stale_retries* immediate retries (with a cache-busting query) are made
    when a page is older than the serial asked for, before giving up with
    :class:`StalePage`.
    """

    def __init__(
        self,
        index_url: str,
        *,
        json_url: str | None = None,
        timeout: float = 30.0,
        stale_retries: int = 2,
        max_body: int = 1 << 30,
        user_agent: str | None = None,
    ) -> None:
        parts = urlsplit(index_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream index URL must be http(s)://host/...: {index_url!r}")
        if json_url is not None and "{name}" not in json_url:
            raise ValueError(f"upstream JSON URL must contain {{name}}: {json_url!r}")
        self.index_url = index_url if index_url.endswith("/") else index_url + "/"
        self.json_url = json_url
        self.timeout = timeout
        self.stale_retries = stale_retries
        self.max_body = max_body
        self.user_agent = user_agent or f"piwheels/{__version__}"
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    # ---- connections -------------------------------------------------------

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conns: dict[tuple[str, str], http.client.HTTPConnection] = self._local.__dict__.setdefault(
            "conns", {}
        )
        conn = conns.get((scheme, netloc))
        if conn is None:
            if scheme == "https":
                conn = http.client.HTTPSConnection(
                    netloc, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
            conns[(scheme, netloc)] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self, scheme: str, netloc: str) -> None:
        conns = self._local.__dict__.get("conns", {})
        conn = conns.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    # ---- requests ----------------------------------------------------------

    def _get(self, url: str, accept: str, etag: str | None = None) -> _Response:
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        headers = {
            "Accept": accept,
            "Accept-Encoding": "gzip",
            "User-Agent": self.user_agent,
        }
        if etag:
            headers["If-None-Match"] = etag
        # A keep-alive connection the server closed while idle fails on first
        # use; that deserves one quiet retry on a fresh connection.
        for attempt in (0, 1):
            conn = self._connection(parts.scheme, parts.netloc)
            try:
                conn.request("GET", target, headers=headers)
                resp = conn.getresponse()
                body = self._read(resp, url)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(parts.scheme, parts.netloc)
                if attempt == 0:
                    continue
                raise ConnectionFailed(f"connection dropped: {exc}", url=url)
            except UpstreamFault:
                self._drop(parts.scheme, parts.netloc)
                raise
            except TimeoutError as exc:
                self._drop(parts.scheme, parts.netloc)
                raise UpstreamTimeout(f"timed out after {self.timeout}s: {exc}", url=url)
            except (OSError, http.client.HTTPException) as exc:
                self._drop(parts.scheme, parts.netloc)
                raise ConnectionFailed(f"{exc.__class__.__name__}: {exc}", url=url)
            if resp.will_close:
                self._drop(parts.scheme, parts.netloc)
            return _Response(resp.status, resp.headers, body, url)
        raise AssertionError("unreachable")

    def _read(self, resp: http.client.HTTPResponse, url: str) -> bytes:
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise InvalidResponse(f"body of {length} bytes is over the limit", url=url)
        try:
            body = resp.read()
        except http.client.IncompleteRead as exc:
            raise TruncatedBody(
                f"body truncated at {len(exc.partial)} bytes"
                + (f" of {exc.expected + len(exc.partial)}" if exc.expected else ""),
                url=url,
            )
        if length is not None and length.isdigit() and len(body) != int(length):
            raise TruncatedBody(f"body is {len(body)} bytes, not {length}", url=url)
        if (resp.getheader("Content-Encoding") or "").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (EOFError, OSError, zlib.error) as exc:
                raise TruncatedBody(f"gzip body is damaged: {exc}", url=url)
        return body

    def _check_status(self, resp: _Response, what: str) -> None:
        if resp.status == 429:
            raise RateLimited(
                f"rate limited fetching {what}",
                url=resp.url,
                retry_after=_retry_after(resp.headers.get("Retry-After")),
            )
        if resp.status >= 500:
            raise ServerError(
                f"HTTP {resp.status} fetching {what}", url=resp.url, status=resp.status
            )
        if resp.status != 200:
            raise HTTPFault(f"HTTP {resp.status} fetching {what}", url=resp.url, status=resp.status)

    def _check_json(self, resp: _Response, what: str) -> None:
        ctype = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype not in (JSON_TYPE, "application/json"):
            raise InvalidResponse(
                f"{what} came as {ctype or 'no content type'}, not {JSON_TYPE}", url=resp.url
            )

    @staticmethod
    def _header_serial(resp: _Response) -> int | None:
        value = (resp.headers.get(SERIAL_HEADER) or "").strip()
        return int(value) if value.isdigit() else None

    # ---- the API -----------------------------------------------------------

    def get_root(self, *, etag: str | None = None) -> RootIndex | None:
        resp = self._get(self.index_url, JSON_TYPE, etag)
        if resp.status == 304 and etag:
            return None
        self._check_status(resp, "the root listing")
        self._check_json(resp, "the root listing")
        root = parse_root(resp.body, header_serial=self._header_serial(resp), url=resp.url)
        root.etag = resp.headers.get("ETag")
        return root

    def project_url(self, name: str) -> str:
        return f"{self.index_url}{quote(name)}/"

    def get_project(self, name: str, *, min_serial: int | None = None) -> ProjectPage | None:
        url = self.project_url(name)
        for attempt in range(self.stale_retries + 1):
            # Retries ask for a URL the cache has not seen, so it goes to the origin.
            resp = self._get(url if attempt == 0 else f"{url}?serial={min_serial}", JSON_TYPE)
            if resp.status == 404:
                return None
            self._check_status(resp, f"the page of {name}")
            self._check_json(resp, f"the page of {name}")
            page = parse_project(
                resp.body, name, header_serial=self._header_serial(resp), url=resp.url
            )
            if min_serial is None or page.serial is None or page.serial >= min_serial:
                return page
            log.debug("stale page of %s: serial %s < %s", name, page.serial, min_serial)
        raise StalePage(
            f"page of {name} has serial {page.serial}, expected at least {min_serial}",
            url=url,
            serial=page.serial or 0,
            expected=min_serial or 0,
        )

    def get_info(self, name: str) -> ProjectInfo | None:
        if self.json_url is None:
            return None
        resp = self._get(self.json_url.format(name=quote(name)), "application/json")
        if resp.status == 404:
            return None
        self._check_status(resp, f"the project JSON of {name}")
        return parse_info(resp.body, url=resp.url)
