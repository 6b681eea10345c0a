"""Classify a parsed request into an :class:`AccessRecord` of one kind.

Rules, first match wins:

1. a bot (see :func:`~piwheels.logger.useragent.is_bot`) -> ``bot``, whatever
   it asked for: bots are counted apart and never as downloads or hits;
2. anything but ``GET`` with status 200 -> ``other`` (so HEAD, 206 Range
   requests, 304 revalidations and errors never count);
3. by path (query strings ignored):

   ============================================  ==============
   ``/simple/<pkg>/<file>.whl``                  ``download``
   ``/simple/<pkg>/<file>.whl.metadata``         ``metadata``
   ``/simple/<pkg>/`` (by an installer)          ``index`` (the articles' "pip searches")
   ``/simple/``                                  ``index_root`` (counted apart, any agent)
   ``/project/<pkg>/``                           ``project``
   ``/project/<pkg>/json/``                      ``json``
   ``/`` and ``/<name>.html``                    ``page`` (``page`` = name, ``home`` for ``/``)
   anything else, and ``/simple/<pkg>/``         ``other``
   fetched by a browser
   ============================================  ==============

Downloads are split by ``installer_name``: ``pip``, ``uv``, another installer,
or ``None`` (direct: browsers, curl, wget).  Package names are canonicalised
(PEP 503).  Hostile paths (``..``, encoded characters, NUL, control
characters, overlong) go to ``other`` with no package; nothing here raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

from piwheels.logger.anonymise import Anonymiser
from piwheels.logger.parse import ParsedLine
from piwheels.logger.useragent import (
    AGENT_BOT,
    AGENT_DIRECT,
    AGENT_OTHER_INSTALLER,
    AGENT_PIP,
    AGENT_UV,
    UserAgent,
    decode_user_agent,
)

__all__ = [
    "BOT",
    "DOWNLOAD",
    "INDEX",
    "INDEX_ROOT",
    "JSON",
    "KINDS",
    "MAX_URI",
    "METADATA",
    "OTHER",
    "PAGE",
    "PROJECT",
    "ROW_FIELDS",
    "AccessRecord",
    "Classifier",
    "agent_of",
    "canonicalize_name",
    "record_from_dict",
    "record_from_row",
    "records_to_dicts",
    "records_to_rows",
    "route",
]

DOWNLOAD = "download"
METADATA = "metadata"
INDEX = "index"
INDEX_ROOT = "index_root"
PROJECT = "project"
JSON = "json"
PAGE = "page"
BOT = "bot"
OTHER = "other"
KINDS = (DOWNLOAD, METADATA, INDEX, INDEX_ROOT, PROJECT, JSON, PAGE, BOT, OTHER)

#: Longest request URI looked at; longer ones are ``other``.
MAX_URI = 2048
MAX_NAME = 200
MAX_FILENAME = 255
MAX_PAGE = 100


class AccessRecord(NamedTuple):
    """One classified request, ready to store.

    A NamedTuple rather than a frozen dataclass: it is just as immutable and
    named, but builds about eight times faster (0.5 us against 4 us for these
    20 fields on this machine), and it already is the row that is sent and
    COPYed.
    """

    time: datetime  # timezone-aware, UTC
    kind: str  # one of KINDS
    # What the path points at (a KINDS value but bot), whatever the agent and
    # status: tells which hit table a bot's request belongs to.
    target: str
    package: str | None  # canonical name, for download/metadata/index/project/json
    filename: str | None  # for download and metadata
    page: str | None  # for page
    status: int
    bytes_sent: int
    client: str  # anonymised, never the raw address
    distro_name: str | None
    distro_version: str | None
    os_name: str | None
    os_version: str | None
    arch: str | None
    py_impl: str | None
    py_version: str | None
    installer_name: str | None  # "pip", "uv", another installer, None = direct
    installer_version: str | None
    setuptools_version: str | None
    ci: bool


#: Field names of a row, in order (``records_to_rows`` output, COPY column list).
ROW_FIELDS: tuple[str, ...] = AccessRecord._fields


def agent_of(record: AccessRecord) -> str:
    """``pip``, ``uv``, ``other-installer``, ``direct`` or ``bot`` for *record*."""
    if record.kind == BOT:
        return AGENT_BOT
    name = record.installer_name
    if name is None:
        return AGENT_DIRECT
    if name == "pip":
        return AGENT_PIP
    if name == "uv":
        return AGENT_UV
    return AGENT_OTHER_INSTALLER


def records_to_rows(records: Iterable[AccessRecord]) -> list[tuple[Any, ...]]:
    """Plain tuples in :data:`ROW_FIELDS` order, for sending in a batch."""
    return [tuple(r) for r in records]


def records_to_dicts(records: Iterable[AccessRecord]) -> list[dict[str, Any]]:
    """Plain dicts keyed by :data:`ROW_FIELDS`, for sending in a batch."""
    return [r._asdict() for r in records]


def record_from_row(row: Iterable[Any]) -> AccessRecord:
    """The inverse of one row of :func:`records_to_rows`."""
    return AccessRecord._make(row)


def record_from_dict(d: dict[str, Any]) -> AccessRecord:
    """The inverse of one dict of :func:`records_to_dicts`."""
    return AccessRecord(**d)


_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_SEPARATORS = re.compile(r"[-_.]+")
_FILENAME = re.compile(r"[A-Za-z0-9._+!-]+")
_PAGE = re.compile(r"[A-Za-z0-9_-]+")
# Anything an honest client never sends in a path we count: percent escapes
# (encoded slashes, NUL, dots), backslashes, control characters, spaces.
_HOSTILE = re.compile(r"[%\\\x00-\x20\x7f]")


def canonicalize_name(name: str) -> str:
    """PEP 503 normal form of a (valid) project name."""
    return _SEPARATORS.sub("-", name).lower()


class Route(NamedTuple):
    kind: str
    package: str | None = None
    filename: str | None = None
    page: str | None = None


_OTHER_ROUTE = Route(OTHER)
_INDEX_ROOT_ROUTE = Route(INDEX_ROOT)
_HOME_ROUTE = Route(PAGE, page="home")


def _package(name: str) -> str | None:
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        return None
    return canonicalize_name(name)


def route(uri: str) -> Route:
    """Where *uri* points, judged by its path alone; hostile paths are ``other``."""
    if len(uri) > MAX_URI or not uri.startswith("/"):
        return _OTHER_ROUTE
    path = uri.partition("?")[0].partition("#")[0]
    if _HOSTILE.search(path):
        return _OTHER_ROUTE
    if path == "/":
        return _HOME_ROUTE
    segs = path.split("/")
    # A dot segment or an empty one inside the path is never one of ours.
    if ".." in segs or "." in segs or "" in segs[1:-1]:
        return _OTHER_ROUTE
    n = len(segs)
    top = segs[1]
    if top == "simple":
        if n == 2 or (n == 3 and segs[2] in ("", "index.html", "index.json")):
            return _INDEX_ROOT_ROUTE
        pkg = _package(segs[2])
        if pkg is None:
            return _OTHER_ROUTE
        if n == 3 or (n == 4 and segs[3] in ("", "index.html", "index.json")):
            return Route(INDEX, pkg)
        if n == 4:
            fname = segs[3]
            if len(fname) > MAX_FILENAME or not _FILENAME.fullmatch(fname):
                return _OTHER_ROUTE
            if fname.endswith(".whl") and len(fname) > 4:
                return Route(DOWNLOAD, pkg, fname)
            if fname.endswith(".whl.metadata") and len(fname) > 13:
                return Route(METADATA, pkg, fname)
        return _OTHER_ROUTE
    if top == "project":
        if n < 3:
            return _OTHER_ROUTE
        pkg = _package(segs[2])
        if pkg is None:
            return _OTHER_ROUTE
        if n == 3 or (n == 4 and segs[3] in ("", "index.html")):
            return Route(PROJECT, pkg)
        if segs[3] == "json" and (n == 4 or (n == 5 and segs[4] in ("", "index.json"))):
            return Route(JSON, pkg)
        return _OTHER_ROUTE
    if n == 2 and top.endswith(".html"):
        name = top[:-5]
        if 0 < len(name) <= MAX_PAGE and _PAGE.fullmatch(name):
            return Route(PAGE, page=name)
    return _OTHER_ROUTE


_NO_UA = (None,) * 10 + (False,)


def _ua_tail(ua: UserAgent) -> tuple[Any, ...]:
    if not ua.is_installer:
        return _NO_UA
    return (
        ua.distro_name,
        ua.distro_version,
        ua.os_name,
        ua.os_version,
        ua.arch,
        ua.py_impl,
        ua.py_version,
        ua.installer_name,
        ua.installer_version,
        ua.setuptools_version,
        ua.ci,
    )


class Classifier:
    """Turns :class:`ParsedLine` into :class:`AccessRecord`; caches routes and agents."""

    _CACHE_LIMIT = 100_000

    def __init__(self, anonymiser: Anonymiser) -> None:
        self.anonymiser = anonymiser
        self._routes: dict[str, Route] = {}
        self._agents: dict[str, tuple[str, tuple[Any, ...]]] = {}

    def _agent(self, ua: str) -> tuple[str, tuple[Any, ...]]:
        hit = self._agents.get(ua)
        if hit is None:
            decoded = decode_user_agent(ua)
            hit = (decoded.agent, _ua_tail(decoded))
            if len(self._agents) >= self._CACHE_LIMIT:
                self._agents.clear()
            self._agents[ua] = hit
        return hit

    def route(self, uri: str) -> Route:
        """:func:`route`, cached."""
        hit = self._routes.get(uri)
        if hit is None:
            hit = route(uri)
            if len(self._routes) >= self._CACHE_LIMIT:
                self._routes.clear()
            self._routes[uri] = hit
        return hit

    def classify(self, line: ParsedLine) -> AccessRecord:
        """The record for one parsed line; never raises."""
        # The caches are looked up inline: this runs for every line, and
        # method calls cost as much as the rest of the work.
        hit = self._agents.get(line.ua)
        if hit is None:
            hit = self._agent(line.ua)
        agent, tail = hit
        r = self._routes.get(line.uri)
        if r is None:
            r = self.route(line.uri)
        kind = r.kind
        if agent == AGENT_BOT:
            kind = BOT
        elif line.method != "GET" or line.status != 200:
            kind = OTHER
        elif kind == INDEX and agent == AGENT_DIRECT:
            # A person browsing the simple index is not a "pip search".
            kind = OTHER
        if kind == OTHER:
            package = filename = page = None
        else:
            package, filename, page = r.package, r.filename, r.page
        return AccessRecord(
            line.time,
            kind,
            r.kind,
            package,
            filename,
            page,
            line.status,
            line.bytes_sent,
            self.anonymiser.client(line.addr, line.time),
            *tail,
        )
