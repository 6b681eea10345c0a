"""Downloads and other hits: batched appends (COPY) and per-project counts from the rollups.

The rollups themselves are computed by :mod:`piwheels.db.stats` (one definition: bots
are never counted as downloads, searches or hits).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from piwheels.errors import ProtocolError

from ._common import atomic
from .schema import CLIENT_KINDS, daily_package_stats

# A client is stored as a salted hash (hex) or a network prefix (address/len), never an address.
_CLIENT_RE = re.compile(r"^(?:[0-9a-f]{16,128}|[0-9A-Fa-f.:]+/\d{1,3})?$")
_KINDS = frozenset(CLIENT_KINDS)
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_PKG_RE = re.compile(r"[-_.]+")


@dataclass(frozen=True)
class ClientInfo:
    """What pip's user agent says about the client (None when unknown)."""

    distro_name: str | None = None
    distro_version: str | None = None
    os_name: str | None = None
    os_version: str | None = None
    arch: str | None = None
    py_name: str | None = None
    py_version: str | None = None
    installer_name: str | None = None
    installer_version: str | None = None
    setuptools_version: str | None = None


_NO_CLIENT = ClientInfo()
_CLIENT_FIELDS = tuple(ClientInfo.__dataclass_fields__)


@dataclass(frozen=True)
class Hit:
    """One request from the access log.

    For downloads ``target`` is the wheel file name; for searches, project and
    JSON hits the project name; for web hits the page path.
    """

    accessed_at: datetime
    target: str
    client: str = ""
    kind: str = "pip"
    bytes_sent: int = 0
    info: ClientInfo = _NO_CLIENT


def _cell(value: object) -> str:
    if value is None:
        return "\\N"
    return str(value).translate(_ESCAPE)


def _check(hits: list[Hit]) -> None:
    """Refuse unknown kinds and raw addresses (checking each distinct value once)."""
    for kind in {h.kind for h in hits} - _KINDS:
        raise ProtocolError(f"unknown client kind {kind!r:.20}")
    match = _CLIENT_RE.fullmatch
    for client in {h.client for h in hits}:
        if not match(client):
            raise ProtocolError(
                f"client {client[:40]!r} is neither a salted hash nor a network prefix; "
                "raw addresses are not stored"
            )


#: Read size for COPY: large, so psycopg2 makes few calls back into Python.
_COPY_CHUNK = 1 << 20


def _copy(conn: Connection, table: str, columns: Sequence[str], data: str) -> None:
    """COPY text-format *data* into *table* on the connection's own transaction."""
    buf = io.BytesIO(data.encode("utf-8"))
    raw = conn.connection.dbapi_connection
    assert raw is not None
    with atomic(conn):
        cur = raw.cursor()
        try:
            cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf, _COPY_CHUNK)
        finally:
            cur.close()


def _package_of(filename: str) -> str:
    return _PKG_RE.sub("-", filename.split("-", 1)[0]).lower()


_HIT_FIELDS = attrgetter("accessed_at", "client", "kind", "bytes_sent", "target", "info")


def _format(hits: list[Hit], client_fields: bool, package_column: bool = False) -> str:
    """The COPY text of *hits* (checked first).

    Rows from an access log repeat the same targets, client descriptions and
    (second-resolution) times, so each distinct value is escaped or formatted
    once and every row is one f-string over cached cells.  The client and
    kind need no escaping: :func:`_check` allows no tab, newline or backslash.
    """
    _check(hits)
    targets: dict[str, str] = {}
    infos: dict[ClientInfo, str] = {}
    times: dict[datetime, str] = {}
    out: list[str] = []
    add = out.append
    for when, client, kind, nbytes, name, info in map(_HIT_FIELDS, hits):
        target = targets.get(name)
        if target is None:
            target = _cell(name)
            if package_column:
                target = f"{_cell(_package_of(name))}\t{target}"
            targets[name] = target
        stamp = times.get(when)
        if stamp is None:
            stamp = times[when] = when.isoformat()
        if client_fields:
            desc = infos.get(info)
            if desc is None:
                desc = infos[info] = "\t".join([_cell(getattr(info, f)) for f in _CLIENT_FIELDS])
            add(f"{stamp}\t{client}\t{kind}\t{int(nbytes)}\t{target}\t{desc}\n")
        else:
            add(f"{stamp}\t{client}\t{kind}\t{int(nbytes)}\t{target}\n")
    return "".join(out)


_BASE = ("accessed_at", "client", "kind", "bytes_sent")
DOWNLOAD_COLUMNS = (*_BASE, "package", "filename", *_CLIENT_FIELDS)


def _add(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    hits: Iterable[Hit],
    client_fields: bool,
    package_column: bool = False,
) -> int:
    rows = hits if isinstance(hits, list) else list(hits)
    if rows:
        _copy(conn, table, columns, _format(rows, client_fields, package_column))
    return len(rows)


def add_downloads(conn: Connection, hits: Iterable[Hit]) -> int:
    """Append wheel downloads (target = file name) in one COPY; returns rows added."""
    return _add(conn, "downloads", DOWNLOAD_COLUMNS, hits, True, package_column=True)


def add_searches(conn: Connection, hits: Iterable[Hit]) -> int:
    """Append index-page hits (target = project name)."""
    return _add(conn, "searches", (*_BASE, "package", *_CLIENT_FIELDS), hits, True)


def add_project_hits(conn: Connection, hits: Iterable[Hit]) -> int:
    return _add(conn, "project_hits", (*_BASE, "package"), hits, False)


def add_json_hits(conn: Connection, hits: Iterable[Hit]) -> int:
    return _add(conn, "json_hits", (*_BASE, "package"), hits, False)


def add_web_hits(conn: Connection, hits: Iterable[Hit]) -> int:
    return _add(conn, "web_hits", (*_BASE, "page"), hits, False)


def download_counts(conn: Connection, package: str, days: int = 30) -> tuple[int, int]:
    """(downloads in the last *days* days, all-time downloads) of a project, from the rollups."""
    s = daily_package_stats
    recent = func.coalesce(func.sum(s.c.downloads).filter(s.c.day >= func.current_date() - days), 0)
    row = conn.execute(
        select(recent, func.coalesce(func.sum(s.c.downloads), 0)).where(s.c.package == package)
    ).one()
    return int(row[0]), int(row[1])
