"""Access-log batches into the hit tables, the statistics rollups, and time saved.

:func:`store_batch` stores one batch from piw-logger (columns named as in
``protocols.LOG_COLUMNS``) in one transaction: a COPY per hit table, plus the
bandwidth of requests no hit table holds (``.metadata`` fetches, the root
index, everything else) added to :data:`EXTRA_SOURCES` rows of
``daily_web_stats`` (``page = ''``).  Those rows only ever grow at ingest,
so :func:`rollup_day` recomputes every other rollup from the raw hits and
leaves them alone.

Bots are stored in the hit table of what they fetched with client kind
``bot``; :func:`rollup_day` leaves them out of ``daily_package_stats`` (so
downloads, searches, page hits and time saved never count them) while
``hourly_totals``, ``daily_client_stats`` and ``daily_web_stats`` keep them
apart by kind.

**Time saved** by one download is the build duration (``builds.duration``)
of the build that produced the file downloaded (``files.build_id``); a file
unknown to the database, or whose build has no duration, saves nothing.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from ._common import atomic

__all__ = [
    "EXTRA_SOURCES",
    "KIND_OF_AGENT",
    "StoreResult",
    "rollup_day",
    "store_batch",
]

#: daily_web_stats sources holding the bandwidth of requests no hit table keeps.
EXTRA_SOURCES = ("metadata", "index_root", "other")
#: Record kinds stored in a hit table (bots go by what they fetched: ``target``).
_TABLE_OF_KIND = {
    "download": "downloads",
    "index": "searches",
    "project": "project_hits",
    "json": "json_hits",
    "page": "web_hits",
}
#: Client kind (hit tables' ``kind``) of each installer name the logger reports.
KIND_OF_AGENT = {"pip": "pip", "uv": "uv"}
_CLIENT_FIELDS = (
    "distro_name",
    "distro_version",
    "os_name",
    "os_version",
    "arch",
    "py_impl",
    "py_version",
    "installer_name",
    "installer_version",
    "setuptools_version",
)
_DB_CLIENT_FIELDS = tuple("py_name" if f == "py_impl" else f for f in _CLIENT_FIELDS)
_BASE = ("accessed_at", "client", "kind", "bytes_sent")
_COLUMNS = {
    "downloads": (*_BASE, "package", "filename", *_DB_CLIENT_FIELDS),
    "searches": (*_BASE, "package", *_DB_CLIENT_FIELDS),
    "project_hits": (*_BASE, "package"),
    "json_hits": (*_BASE, "package"),
    "web_hits": (*_BASE, "page"),
}
# Stored clients are salted hashes or network prefixes; anything else is not stored.
_CLIENT_RE = re.compile(r"(?:[0-9a-f]{16,128}|[0-9A-Fa-f.:]+/\d{1,3})?")
_ZERO = timedelta(0)
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass
class StoreResult:
    """What :func:`store_batch` did with a batch."""

    stored: int = 0
    by_table: Counter[str] = field(default_factory=Counter)
    extra: int = 0
    skipped: int = 0
    days: set[date] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def _cell(value: object) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_ESCAPE)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _client_kind(kind: str, installer: str | None) -> str:
    if kind == "bot":
        return "bot"
    if installer is None:
        return "direct"
    return KIND_OF_AGENT.get(installer, "other")


def store_batch(conn: Connection, columns: Mapping[str, Sequence[Any]]) -> StoreResult:
    """Store one batch of records (columns) in one transaction; see the module docs.

    A row that cannot be stored (unknown kind, a hit without its package) is
    skipped and counted, never stored half; a client value that is neither a
    hash nor a prefix is stored empty, so no raw address is ever kept.
    """
    res = StoreResult()
    lines: dict[str, list[str]] = {t: [] for t in _COLUMNS}
    extra: Counter[tuple[date, str, str]] = Counter()
    extra_bytes: Counter[tuple[date, str, str]] = Counter()
    names = ("time", "kind", "target", "package", "filename", "page", "bytes_sent", "client")
    cols = [columns[n] for n in names]
    client_cols = [columns[f] for f in _CLIENT_FIELDS]
    n = len(cols[0])
    days = res.days
    bad_clients = 0
    for i in range(n):
        when, kind, target, package, filename, page, nbytes, client = (c[i] for c in cols)
        installer = client_cols[7][i]
        ckind = _client_kind(kind, installer)
        where = target if kind == "bot" else kind
        table = _TABLE_OF_KIND.get(where)
        day = when.date() if when.utcoffset() == _ZERO else None
        if client is None:
            client = ""
        elif not _CLIENT_RE.fullmatch(client):
            client = ""
            bad_clients += 1
        if table is None:
            if where not in EXTRA_SOURCES:
                res.skipped += 1
                continue
            key = (_utc_day(when, day), where, ckind)
            extra[key] += 1
            extra_bytes[key] += nbytes
            res.extra += 1
            days.add(key[0])
            continue
        head = [when.isoformat(), client, ckind, str(nbytes)]
        if table == "downloads":
            if not package or not filename:
                res.skipped += 1
                continue
            row = [*head, package, filename, *(c[i] for c in client_cols)]
        elif table == "searches":
            if not package:
                res.skipped += 1
                continue
            row = [*head, package, *(c[i] for c in client_cols)]
        elif table == "web_hits":
            if not page:
                res.skipped += 1
                continue
            row = [*head, page]
        else:
            if not package:
                res.skipped += 1
                continue
            row = [*head, package]
        lines[table].append("\t".join(map(_cell, row)) + "\n")
        res.by_table[table] += 1
        days.add(_utc_day(when, day))
    if bad_clients:
        res.problems.append(f"{bad_clients} client values were not hashes or prefixes")
    if res.skipped:
        res.problems.append(f"{res.skipped} records had no table or lacked their package")
    with atomic(conn):
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        try:
            for table, rows in lines.items():
                if rows:
                    cur.copy_expert(
                        f"COPY {table} ({', '.join(_COLUMNS[table])}) FROM STDIN",
                        io.StringIO("".join(rows)),
                    )
        finally:
            cur.close()
        if extra:
            conn.execute(
                text(
                    """
                    INSERT INTO daily_web_stats (day, source, page, kind, hits, bytes_sent)
                    VALUES (:day, :source, '', :kind, :hits, :bytes)
                    ON CONFLICT (day, source, page, kind) DO UPDATE
                    SET hits = daily_web_stats.hits + excluded.hits,
                        bytes_sent = daily_web_stats.bytes_sent + excluded.bytes_sent
                    """
                ),
                [
                    {"day": d, "source": s, "kind": k, "hits": h, "bytes": extra_bytes[(d, s, k)]}
                    for (d, s, k), h in extra.items()
                ],
            )
    res.stored = sum(res.by_table.values()) + res.extra
    return res


def _utc_day(when: datetime, day: date | None) -> date:
    return day if day is not None else when.astimezone(UTC).date()


_DIMS = ", ".join(f"coalesce({f}, '')" for f in _DB_CLIENT_FIELDS)
_DIM_COLS = ", ".join(_DB_CLIENT_FIELDS)
_RANGE = "accessed_at >= CAST(:day AS date) AND accessed_at < CAST(:day AS date) + 1"
_NOBOT = "kind <> 'bot'"


def _rollup_statements() -> list[str]:
    stmts = [
        "DELETE FROM daily_package_stats WHERE day = :day",
        "DELETE FROM daily_client_stats WHERE day = :day",
        "DELETE FROM daily_web_stats WHERE day = :day AND source IN ('project', 'json', 'web')",
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
            WHERE d.{_RANGE} AND d.{_NOBOT} GROUP BY d.package
            UNION ALL
            SELECT package, 0, 0, 0, count(*), 0, 0 FROM searches
            WHERE {_RANGE} AND {_NOBOT} GROUP BY package
            UNION ALL
            SELECT package, 0, 0, 0, 0, count(*), 0 FROM project_hits
            WHERE {_RANGE} AND {_NOBOT} GROUP BY package
            UNION ALL
            SELECT package, 0, 0, 0, 0, 0, count(*) FROM json_hits
            WHERE {_RANGE} AND {_NOBOT} GROUP BY package
        ) s
        GROUP BY package
        """,
    ]
    for source, table in (("download", "downloads"), ("search", "searches")):
        stmts.append(
            f"""
            INSERT INTO daily_client_stats (day, source, kind, {_DIM_COLS}, hits, bytes_sent)
            SELECT :day, '{source}', kind, {_DIMS}, count(*), sum(bytes_sent)
            FROM {table} WHERE {_RANGE} GROUP BY kind, {_DIMS}
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
    return stmts


_ROLLUP = _rollup_statements()


def rollup_day(conn: Connection, day: date) -> None:
    """(Re)compute the rollups of one UTC *day* from the raw hits (idempotent).

    Bots are kept out of ``daily_package_stats``; the :data:`EXTRA_SOURCES` rows of
    ``daily_web_stats`` (kept only at ingest) are left as they are.
    """
    with atomic(conn):
        # Rollups use UTC days whatever the session's time zone.
        conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
        for stmt in _ROLLUP:
            conn.execute(text(stmt), {"day": day})


def rollup_days(conn: Connection, days: Iterable[date]) -> int:
    """Roll up each of *days*; returns how many."""
    n = 0
    for day in sorted(set(days)):
        rollup_day(conn, day)
        n += 1
    return n
