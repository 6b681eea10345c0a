"""Downloads and other hits: batched appends (COPY) and the daily rollups statistics read."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select, text
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


def _check(hit: Hit) -> None:
    if hit.kind not in _KINDS:
        raise ProtocolError(f"unknown client kind {hit.kind!r:.20}")
    if not _CLIENT_RE.fullmatch(hit.client):
        raise ProtocolError(
            f"client {hit.client[:40]!r} is neither a salted hash nor a network prefix; "
            "raw addresses are not stored"
        )


def _copy(conn: Connection, table: str, columns: Sequence[str], lines: list[str]) -> int:
    """COPY text-format *lines* into *table* on the connection's own transaction."""
    if not lines:
        return 0
    buf = io.StringIO("".join(lines))
    raw = conn.connection.dbapi_connection
    assert raw is not None
    with atomic(conn):
        cur = raw.cursor()
        try:
            cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf)
        finally:
            cur.close()
    return len(lines)


def _package_of(filename: str) -> str:
    return _PKG_RE.sub("-", filename.split("-", 1)[0]).lower()


def _rows(hits: Iterable[Hit], client_fields: bool, target_of: object = None) -> list[str]:
    lines = []
    for h in hits:
        _check(h)
        cells = [h.accessed_at.isoformat(), h.client, h.kind, str(int(h.bytes_sent))]
        if target_of is not None:
            cells.append(_package_of(h.target))
        cells.append(h.target)
        if client_fields:
            info = h.info
            cells.extend(getattr(info, f) for f in _CLIENT_FIELDS)
        lines.append("\t".join(map(_cell, cells)) + "\n")
    return lines


_BASE = ("accessed_at", "client", "kind", "bytes_sent")


def add_downloads(conn: Connection, hits: Iterable[Hit]) -> int:
    """Append wheel downloads (target = file name) in one COPY; returns rows added."""
    lines = _rows(hits, True, target_of=_package_of)
    return _copy(conn, "downloads", (*_BASE, "package", "filename", *_CLIENT_FIELDS), lines)


def add_searches(conn: Connection, hits: Iterable[Hit]) -> int:
    """Append index-page hits (target = project name)."""
    lines = _rows(hits, True)
    return _copy(conn, "searches", (*_BASE, "package", *_CLIENT_FIELDS), lines)


def add_project_hits(conn: Connection, hits: Iterable[Hit]) -> int:
    return _copy(conn, "project_hits", (*_BASE, "package"), _rows(hits, False))


def add_json_hits(conn: Connection, hits: Iterable[Hit]) -> int:
    return _copy(conn, "json_hits", (*_BASE, "package"), _rows(hits, False))


def add_web_hits(conn: Connection, hits: Iterable[Hit]) -> int:
    return _copy(conn, "web_hits", (*_BASE, "page"), _rows(hits, False))


_DIMS = ", ".join(f"coalesce({f}, '')" for f in _CLIENT_FIELDS)
_DIM_COLS = ", ".join(_CLIENT_FIELDS)
_RANGE = "accessed_at >= CAST(:day AS date) AND accessed_at < CAST(:day AS date) + 1"


def rollup(conn: Connection, day: date) -> None:
    """(Re)compute every rollup for one UTC *day* from the raw hits (idempotent).

    Run it for today periodically and once more for yesterday after midnight.
    """
    p = {"day": day}
    stmts = [
        "DELETE FROM daily_package_stats WHERE day = :day",
        "DELETE FROM daily_client_stats WHERE day = :day",
        "DELETE FROM daily_web_stats WHERE day = :day",
        "DELETE FROM hourly_totals WHERE hour >= CAST(:day AS date) "
        "AND hour < CAST(:day AS date) + 1",
        f"""
        INSERT INTO daily_package_stats
            (day, package, downloads, bytes_sent, seconds_saved, searches, project_hits, json_hits)
        SELECT :day, package, sum(dl), sum(bytes), sum(saved), sum(se), sum(ph), sum(jh)
        FROM (
            SELECT d.package, count(*) AS dl, sum(d.bytes_sent) AS bytes,
                   coalesce(sum(extract(epoch FROM b.duration)), 0) AS saved,
                   0 AS se, 0 AS ph, 0 AS jh
            FROM downloads d
            LEFT JOIN files f ON f.filename = d.filename
            LEFT JOIN builds b ON b.build_id = f.build_id
            WHERE d.{_RANGE} GROUP BY d.package
            UNION ALL
            SELECT package, 0, 0, 0, count(*), 0, 0 FROM searches WHERE {_RANGE}
            GROUP BY package
            UNION ALL
            SELECT package, 0, 0, 0, 0, count(*), 0 FROM project_hits WHERE {_RANGE}
            GROUP BY package
            UNION ALL
            SELECT package, 0, 0, 0, 0, 0, count(*) FROM json_hits WHERE {_RANGE}
            GROUP BY package
        ) s
        GROUP BY package
        """,
    ]
    for source, table in (("download", "downloads"), ("search", "searches")):
        stmts.append(
            f"""
            INSERT INTO daily_client_stats (day, source, kind, {_DIM_COLS}, hits, bytes_sent)
            SELECT :day, '{source}', kind, {_DIMS}, count(*), sum(bytes_sent)
            FROM {table} WHERE {_RANGE}
            GROUP BY kind, {_DIMS}
            """
        )
    for source, table, col in (
        ("project", "project_hits", "package"),
        ("json", "json_hits", "package"),
        ("web", "web_hits", "page"),
    ):
        stmts.append(
            f"""
            INSERT INTO daily_web_stats (day, source, page, kind, hits, bytes_sent)
            SELECT :day, '{source}', {col}, kind, count(*), sum(bytes_sent)
            FROM {table} WHERE {_RANGE} GROUP BY {col}, kind
            """
        )
    for source, table in (
        ("download", "downloads"),
        ("search", "searches"),
        ("project", "project_hits"),
        ("json", "json_hits"),
        ("web", "web_hits"),
    ):
        stmts.append(
            f"""
            INSERT INTO hourly_totals (hour, source, kind, hits, bytes_sent)
            SELECT date_trunc('hour', accessed_at), '{source}', kind, count(*), sum(bytes_sent)
            FROM {table} WHERE {_RANGE} GROUP BY 1, kind
            """
        )
    with atomic(conn):
        # Rollups use UTC days whatever the session's time zone.
        conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
        for stmt in stmts:
            conn.execute(text(stmt), p)


def download_counts(conn: Connection, package: str, days: int = 30) -> tuple[int, int]:
    """(downloads in the last *days* days, all-time downloads) of a project, from the rollups."""
    s = daily_package_stats
    recent = func.coalesce(func.sum(s.c.downloads).filter(s.c.day >= func.current_date() - days), 0)
    row = conn.execute(
        select(recent, func.coalesce(func.sum(s.c.downloads), 0)).where(s.c.package == package)
    ).one()
    return int(row[0]), int(row[1])
