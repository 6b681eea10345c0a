"""Access-log batches into the hit tables and the statistics rollups; time saved.

:func:`store_batch` stores one packed batch from piw-logger (rows per hit
table in COPY text, see ``protocols.logger``) in one transaction: the rows
are COPYed as they came, and one statement moves them into the hit tables
and adds them to every rollup, so the figures are current at each commit.
The bandwidth of requests no hit table holds (``.metadata`` fetches, the
root index, everything else) is added to :data:`EXTRA_SOURCES` rows of
``daily_web_stats`` (``page = ''``).  Those rows only ever grow at ingest,
so :func:`rollup_day` (which recomputes one day from the raw hits, to repair
or re-check it) leaves them alone.

Bots are stored in the hit table of what they fetched with client kind
``bot``; the rollups leave them out of ``daily_package_stats`` (so
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
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg2
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ..protocols import LOG_EXTRA_SOURCES, LOG_TABLES
from ._common import atomic

__all__ = [
    "EXTRA_SOURCES",
    "StoreResult",
    "batch_days",
    "prune_batches",
    "rollup_day",
    "store_batch",
]

#: daily_web_stats sources holding the bandwidth of requests no hit table keeps.
EXTRA_SOURCES = LOG_EXTRA_SOURCES
_DB_CLIENT_FIELDS = LOG_TABLES["downloads"][6:]


@dataclass
class StoreResult:
    """What :func:`store_batch` did with a batch."""

    stored: int = 0
    by_table: Counter[str] = field(default_factory=Counter)
    extra: int = 0
    #: The batch was stored before (recorded in ``log_batches``): nothing was stored now.
    duplicate: bool = False


def _stage(table: str) -> str:
    return f"stage_{table}"


# Per-connection staging tables: a batch is COPYed into them, then one
# statement moves the rows to the hit tables and adds them to the rollups.
# ON COMMIT DELETE ROWS empties them at commit; the statement also deletes
# what it read, for callers that store several batches in one transaction.
_STAGE_DDL = ";".join(
    f"CREATE TEMP TABLE IF NOT EXISTS {_stage(t)} (LIKE {t} INCLUDING DEFAULTS) "
    "ON COMMIT DELETE ROWS"
    for t in LOG_TABLES
)
_DAY = "(accessed_at AT TIME ZONE 'UTC')::date"
#: Figures of daily_package_stats (and daily_totals), and those monthly_package_stats keeps.
_PKG_COLS = ("downloads", "bytes_sent", "seconds_saved", "searches", "project_hits", "json_hits")
_MONTH_COLS = ("downloads", "searches", "project_hits", "json_hits")
_ADD = "{c} = {t}.{c} + excluded.{c}"


def _add_all(table: str, cols: Sequence[str]) -> str:
    return ", ".join(_ADD.format(c=c, t=table) for c in cols)


def _store_statement(insert: bool = True) -> str:
    """The one statement that stores a staged batch and adds it to every rollup.

    Without *insert* the staged rows only go to the rollups (``rollup_day``
    stages a day's raw hits and adds them to its emptied rollups).
    """
    ins = [
        f"ins_{t} AS (INSERT INTO {t} ({', '.join(cols)}) "
        f"SELECT {', '.join(cols)} FROM {_stage(t)})"
        for t, cols in LOG_TABLES.items()
    ]
    dels = [f"del_{t} AS (DELETE FROM {_stage(t)})" for t in LOG_TABLES]
    sd, ss, sp, sj, sw = (_stage(t) for t in LOG_TABLES)
    sums = ", ".join(f"sum({c})" for c in _PKG_COLS)
    pkg = f"""
    pkg_rows AS MATERIALIZED (
        SELECT day, package, sum(dl) AS downloads, sum(bytes) AS bytes_sent,
               sum(saved) AS seconds_saved, sum(se) AS searches, sum(ph) AS project_hits,
               sum(jh) AS json_hits
        FROM (
            -- Downloads per file first: files and builds are looked up once per file.
            SELECT d.day, d.package, sum(d.n) AS dl, sum(d.bytes) AS bytes,
                   coalesce(sum(d.n * extract(epoch FROM b.duration)), 0) AS saved,
                   0 AS se, 0 AS ph, 0 AS jh
            FROM (
                SELECT {_DAY} AS day, package, filename, count(*) AS n, sum(bytes_sent) AS bytes
                FROM {sd} WHERE {_NOBOT} GROUP BY 1, package, filename
            ) d
            LEFT JOIN files f ON f.filename = d.filename
            LEFT JOIN builds b ON b.build_id = f.build_id
            GROUP BY 1, 2
            UNION ALL
            SELECT {_DAY}, package, 0, 0, 0, count(*), 0, 0 FROM {ss}
            WHERE {_NOBOT} GROUP BY 1, 2
            UNION ALL
            SELECT {_DAY}, package, 0, 0, 0, 0, count(*), 0 FROM {sp}
            WHERE {_NOBOT} GROUP BY 1, 2
            UNION ALL
            SELECT {_DAY}, package, 0, 0, 0, 0, 0, count(*) FROM {sj}
            WHERE {_NOBOT} GROUP BY 1, 2
        ) s
        GROUP BY day, package
    ),
    pkg AS (
        INSERT INTO daily_package_stats (day, package, {", ".join(_PKG_COLS)})
        SELECT day, package, {", ".join(_PKG_COLS)} FROM pkg_rows
        ON CONFLICT (day, package) DO UPDATE SET {_add_all("daily_package_stats", _PKG_COLS)}
    ),
    tot AS (
        INSERT INTO daily_totals (day, {", ".join(_PKG_COLS)})
        SELECT day, {sums} FROM pkg_rows GROUP BY day
        ON CONFLICT (day) DO UPDATE SET {_add_all("daily_totals", _PKG_COLS)}
    ),
    mon AS (
        INSERT INTO monthly_package_stats (month, package, {", ".join(_MONTH_COLS)})
        SELECT date_trunc('month', day)::date, package,
               {", ".join(f"sum({c})" for c in _MONTH_COLS)}
        FROM pkg_rows GROUP BY 1, 2
        ON CONFLICT (month, package)
        DO UPDATE SET {_add_all("monthly_package_stats", _MONTH_COLS)}
    )"""
    client = f"""
    client AS (
        INSERT INTO daily_client_stats (day, source, kind, {_DIM_COLS}, hits, bytes_sent)
        SELECT {_DAY}, 'download', kind, {_DIMS}, count(*), sum(bytes_sent)
        FROM {sd} GROUP BY 1, kind, {_DIMS}
        UNION ALL
        SELECT {_DAY}, 'search', kind, {_DIMS}, count(*), sum(bytes_sent)
        FROM {ss} GROUP BY 1, kind, {_DIMS}
        ON CONFLICT ON CONSTRAINT pk_daily_client_stats
        DO UPDATE SET {_add_all("daily_client_stats", ("hits", "bytes_sent"))}
    )"""
    web = f"""
    web AS (
        INSERT INTO daily_web_stats (day, source, page, kind, hits, bytes_sent)
        SELECT {_DAY}, 'project', package, kind, count(*), sum(bytes_sent)
        FROM {sp} GROUP BY 1, package, kind
        UNION ALL
        SELECT {_DAY}, 'json', package, kind, count(*), sum(bytes_sent)
        FROM {sj} GROUP BY 1, package, kind
        UNION ALL
        SELECT {_DAY}, 'web', page, kind, count(*), sum(bytes_sent)
        FROM {sw} GROUP BY 1, page, kind
        UNION ALL
        SELECT day, source, '', kind, hits, bytes_sent
        FROM unnest(CAST(:x_day AS date[]), CAST(:x_source AS text[]), CAST(:x_kind AS text[]),
                    CAST(:x_hits AS bigint[]), CAST(:x_bytes AS bigint[]))
             AS x(day, source, kind, hits, bytes_sent)
        ON CONFLICT (day, source, page, kind)
        DO UPDATE SET {_add_all("daily_web_stats", ("hits", "bytes_sent"))}
    )"""
    hour_parts = " UNION ALL ".join(
        f"SELECT accessed_at, '{src}' AS source, kind, bytes_sent FROM {_stage(t)}"
        for src, t in zip(("download", "search", "project", "json", "web"), LOG_TABLES, strict=True)
    )
    hour = f"""
    hour AS (
        INSERT INTO hourly_totals (hour, source, kind, hits, bytes_sent)
        SELECT date_trunc('hour', accessed_at), source, kind, count(*), sum(bytes_sent)
        FROM ({hour_parts}) h GROUP BY 1, source, kind
        ON CONFLICT (hour, source, kind)
        DO UPDATE SET {_add_all("hourly_totals", ("hits", "bytes_sent"))}
    )"""
    ctes = ",\n".join([*(ins if insert else []), pkg, client, web, hour, *dels])
    return f"WITH {ctes}\nSELECT 1"


#: Read size for COPY: large, so psycopg2 makes few calls back into Python.
_COPY_CHUNK = 1 << 20


def store_batch(
    conn: Connection,
    tables: Mapping[str, bytes],
    extra: Sequence[Sequence[Any]] = (),
    *,
    source: bytes | None = None,
    batch_id: int | None = None,
    timings: dict[str, float] | None = None,
) -> StoreResult:
    """Store one packed batch and add it to the rollups, in one transaction.

    *tables* maps hit tables to their rows in COPY text format (checked by
    ``protocols.logger``), *extra* holds ``[day, source, kind, requests,
    bytes]`` bandwidth totals.  The rows are COPYed into staging tables as
    they are, then one statement inserts them into the hit tables and adds
    them to ``daily_package_stats`` (bots left out), ``daily_client_stats``,
    ``daily_web_stats`` and ``hourly_totals``, so the rollups are current as
    soon as the batch is committed.  A row PostgreSQL refuses (a date such as
    February 30) fails the whole batch with :class:`sqlalchemy.exc.DataError`
    or :class:`~sqlalchemy.exc.IntegrityError` and stores nothing.

    With *source* (the logger's identity) and *batch_id*, the batch is
    recorded in ``log_batches`` in the same transaction as its rows; a batch
    recorded already is not stored again (``duplicate``, with the count
    stored the first time), so a resend after a lost ACK is exact even
    across a master restart.

    With *timings*, the wall seconds of the COPY and of the rollup statement
    are added to its ``copy`` and ``statement`` keys (for the benchmark).
    """
    res = StoreResult()
    for table, rows in tables.items():
        if rows:
            res.by_table[table] = rows.count(b"\n")
    x = list(zip(*extra, strict=True)) if extra else [(), (), (), (), ()]
    res.extra = sum(x[3])
    res.stored = sum(res.by_table.values()) + res.extra
    with atomic(conn):
        if source is not None and batch_id is not None:
            # First, so a resend waits here for a first copy still being stored.
            new = conn.execute(_RECORD, {"s": source, "b": batch_id, "n": res.stored}).first()
            if new is None:
                before = conn.execute(_RECORDED, {"s": source, "b": batch_id}).scalar_one()
                return StoreResult(stored=int(before), duplicate=True)
        conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        sql = _STAGE_DDL
        t0 = time.perf_counter()
        try:
            cur.execute(sql)
            for table, rows in tables.items():
                if rows:
                    sql = f"COPY {_stage(table)} ({', '.join(LOG_TABLES[table])}) FROM STDIN"
                    cur.copy_expert(sql, io.BytesIO(rows), _COPY_CHUNK)
        except psycopg2.Error as exc:
            # As SQLAlchemy would wrap it: DataError, IntegrityError, OperationalError...
            raise DBAPIError.instance(sql, None, exc, psycopg2.Error) from exc
        finally:
            cur.close()
        t1 = time.perf_counter()
        conn.execute(
            _STORE,
            {
                "x_day": [date.fromisoformat(d) for d in x[0]],
                "x_source": list(x[1]),
                "x_kind": list(x[2]),
                "x_hits": list(x[3]),
                "x_bytes": list(x[4]),
            },
        )
        if timings is not None:
            timings["copy"] = timings.get("copy", 0.0) + t1 - t0
            timings["statement"] = timings.get("statement", 0.0) + time.perf_counter() - t1
    return res


_RECORD = text(
    "INSERT INTO log_batches (source, batch_id, stored) VALUES (:s, :b, :n) "
    "ON CONFLICT DO NOTHING RETURNING 1"
)
_RECORDED = text("SELECT stored FROM log_batches WHERE source = :s AND batch_id = :b")
#: How long stored batch ids are kept (a logger resends within minutes).
BATCH_RETENTION_DAYS = 2


def prune_batches(conn: Connection, keep_days: int = BATCH_RETENTION_DAYS) -> int:
    """Forget stored batch ids older than *keep_days*; returns how many."""
    with atomic(conn):
        res = conn.execute(
            text("DELETE FROM log_batches WHERE stored_at < now() - make_interval(days => :k)"),
            {"k": keep_days},
        )
    return int(res.rowcount)


def batch_days(tables: Mapping[str, bytes], extra: Sequence[Sequence[Any]] = ()) -> set[date]:
    """The UTC days a packed batch touches (each row starts with its UTC time)."""
    found: set[bytes] = set()
    for rows in tables.values():
        found.update(_ROW_DAY.findall(rows))
    return {date.fromisoformat(d.decode()) for d in found} | {
        date.fromisoformat(e[0]) for e in extra
    }


_ROW_DAY = re.compile(rb"^(\d{4}-\d\d-\d\d)", re.M)


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
        "DELETE FROM daily_totals WHERE day = :day",
    ]
    # The day's raw hits are read once per table, into the staging tables;
    # the batch statement (without its inserts into the hit tables) then adds
    # them to the emptied rollups.  Reading each table once per rollup (13
    # range scans, each a full scan once the BRIN ranges of a table span many
    # days) made this slow.
    for table, cols in LOG_TABLES.items():
        stmts.append(
            f"INSERT INTO {_stage(table)} ({', '.join(cols)}) "
            f"SELECT {', '.join(cols)} FROM {table} WHERE {_RANGE}"
        )
    stmts.append(_store_statement(insert=False))
    # The day's month again from its days (a day's old figures are gone by now).
    month = "CAST(date_trunc('month', CAST(:day AS date)) AS date)"
    mcols = ", ".join(_MONTH_COLS)
    stmts += [
        f"DELETE FROM monthly_package_stats WHERE month = {month}",
        f"""
        INSERT INTO monthly_package_stats (month, package, {mcols})
        SELECT {month}, package, {", ".join(f"sum({c})" for c in _MONTH_COLS)}
        FROM daily_package_stats
        WHERE day >= {month} AND day < {month} + interval '1 month'
        GROUP BY package
        """,
    ]
    return stmts


_ROLLUP = _rollup_statements()
_NO_EXTRA: dict[str, list[Any]] = {
    k: [] for k in ("x_day", "x_source", "x_kind", "x_hits", "x_bytes")
}
_STORE = text(_store_statement())


def rollup_day(conn: Connection, day: date) -> None:
    """(Re)compute the rollups of one UTC *day* from the raw hits (idempotent).

    Bots are kept out of ``daily_package_stats``; the :data:`EXTRA_SOURCES` rows of
    ``daily_web_stats`` (kept only at ingest) are left as they are.
    """
    with atomic(conn):
        # Rollups use UTC days whatever the session's time zone.
        conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
        conn.execute(text(_STAGE_DDL))
        params = {"day": day, **_NO_EXTRA}
        for stmt in _ROLLUP:
            conn.execute(text(stmt), params)


def rollup_days(conn: Connection, days: Iterable[date]) -> int:
    """Roll up each of *days*; returns how many."""
    n = 0
    for day in sorted(set(days)):
        rollup_day(conn, day)
        n += 1
    return n
