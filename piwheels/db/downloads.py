"""Downloads and other hits: batched appends (COPY) and per-project counts from the rollups.

The rollups themselves are computed by :mod:`piwheels.db.stats` (one definition: bots
are never counted as downloads, searches or hits).
"""

from __future__ import annotations

import io
import re
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any

import psycopg2
from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from piwheels.errors import ProtocolError
from piwheels.protocols import LOG_TABLES, parse_rollup

from ._common import atomic
from .schema import CLIENT_KINDS, daily_package_stats
from .stats import StoreResult

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


# ---------------------------------------------------------------------------
# Packed log batches: each row written once, the rollups added from aggregates

#: Rollup source of each hit table (``hourly_totals.source``, ``daily_web_stats.source``).
_SOURCE = {
    "downloads": "download",
    "searches": "search",
    "project_hits": "project",
    "json_hits": "json",
    "web_hits": "web",
}
# Cells cut from the front of each table's rows: time, client, kind, bytes, the name
# cell(s), then for downloads and searches the client description left as one cell.
_CUTS = {"downloads": 6, "searches": 5, "project_hits": 4, "json_hits": 4, "web_hits": 4}
_BOT = b"bot"
_UNESCAPE_RE = re.compile(r"\\(.)")
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
# Array-literal elements of raw COPY cells, kept across batches (names repeat).
_LITERALS: dict[bytes | str, str] = {}
_DESCS: dict[bytes | str, tuple[str, ...]] = {}
_CACHE_LIMIT = 100_000


def _value(cell: bytes | str) -> str | None:
    """The value of a COPY text cell (``\\N`` is NULL; escapes as ``protocols.logger`` allows)."""
    if cell == b"\\N" or cell == "\\N":
        return None
    value = cell.decode("utf-8") if isinstance(cell, bytes) else cell
    if "\\" in value:
        value = _UNESCAPE_RE.sub(lambda m: _UNESCAPES.get(m.group(1), m.group(1)), value)
    return value


def _element(value: str | None) -> str:
    """*value* as an element of a PostgreSQL array literal (NULL for None)."""
    if value is None:
        return "NULL"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(cell: bytes | str) -> str:
    """The array-literal element of a raw COPY cell, '' for NULL (cached)."""
    lit = _LITERALS.get(cell)
    if lit is None:
        if len(_LITERALS) >= _CACHE_LIMIT:
            _LITERALS.clear()
        lit = _LITERALS[cell] = _element(_value(cell) or "")
    return lit


def _desc(cell: bytes | str) -> tuple[str, ...]:
    """The array-literal elements of a raw client description ('' for NULL; cached)."""
    desc = _DESCS.get(cell)
    if desc is None:
        cells = cell.split(b"\t") if isinstance(cell, bytes) else cell.split("\t")
        desc = tuple(map(_literal, cells))
        if len(desc) != len(_CLIENT_FIELDS):
            raise ProtocolError(f"a client description has {len(desc)} cells, not 10")
        if len(_DESCS) >= _CACHE_LIMIT:
            _DESCS.clear()
        _DESCS[cell] = desc
    return desc


def _tally(acc: dict[Any, list[int]], keys: Iterable[Any], nbytes: Iterable[int]) -> None:
    """Add one request and its bytes to ``acc[key]`` for each key (keys and bytes in step)."""
    get = acc.get
    for key, n in zip(keys, nbytes, strict=True):
        tot = get(key)
        if tot is None:
            acc[key] = [1, n]
        else:
            tot[0] += 1
            tot[1] += n


def _merge(acc: dict[Any, list[int]], key: Any, values: Sequence[int]) -> None:
    tot = acc.get(key)
    if tot is None:
        acc[key] = list(values)
    else:
        for i, v in enumerate(values):
            tot[i] += v


class BatchRollup:
    """What packed log batches add to each rollup, tallied from their COPY text.

    Every rollup a report reads is a sum of requests and bytes over a few
    columns of the rows, so a batch's contribution is a handful of aggregate
    rows per rollup, each added by one upsert: the rows themselves are
    written once, into their hit tables.  The tallies are made on the raw
    cells (each table's columns are cut with one split per row and counted
    by key) and only distinct keys are decoded, straight into the array
    literals the rollup statement unnests.  Bots are left out of the
    per-project figures, as in :func:`piwheels.db.stats.rollup_day`.
    """

    def __init__(self) -> None:
        # Raw keys (bytes cells) -> [requests, bytes]; decoded and merged by params().
        self.hours: dict[str, dict[tuple[bytes, bytes], list[int]]] = {}
        self.files: dict[tuple[bytes, bytes, bytes, bytes], list[int]] = {}
        self.names: Counter[tuple[bytes, bytes, bytes]] = Counter()
        self.clients: dict[str, dict[tuple[bytes, bytes, bytes], list[int]]] = {}
        self.pages: dict[str, dict[tuple[bytes, bytes, bytes], list[int]]] = {}
        self.extra: dict[tuple[str, str, str], list[int]] = {}
        self.rollups: list[Mapping[str, Any]] = []

    def add_rollup(self, rollup: Mapping[str, Any]) -> None:
        """Add a batch's own aggregates (``protocols.logger`` BATCH ``rollup``, checked there
        to add up to the batch's rows) instead of tallying its rows."""
        self.rollups.append(rollup)

    def add_rows(self, table: str, rows: bytes) -> None:
        """Tally one hit table's rows (COPY text, columns of ``protocols.LOG_TABLES``)."""
        lines = rows.split(b"\n")
        if lines[-1]:
            raise ProtocolError(f"{table} rows do not end with a newline")
        lines.pop()
        if not lines:
            return
        cuts = _CUTS[table]
        try:
            cols = list(zip(*[line.split(b"\t", cuts) for line in lines], strict=True))
        except ValueError:
            cols = []
        if len(cols) != cuts + 1:
            raise ProtocolError(f"{table} rows do not all have {len(LOG_TABLES[table])} cells")
        stamps, kinds = cols[0], cols[2]
        nbytes = list(map(int, cols[3]))
        days = [t[:10] for t in stamps]
        source = _SOURCE[table]
        hours = [t[:13] for t in stamps]
        _tally(self.hours.setdefault(source, {}), zip(hours, kinds, strict=True), nbytes)
        if table == "downloads":
            _tally(self.files, zip(days, kinds, cols[4], cols[5], strict=True), nbytes)
            descs = zip(days, kinds, cols[6], strict=True)
            _tally(self.clients.setdefault(source, {}), descs, nbytes)
        elif table == "searches":
            self.names.update(zip(days, kinds, cols[4], strict=True))
            descs = zip(days, kinds, cols[5], strict=True)
            _tally(self.clients.setdefault(source, {}), descs, nbytes)
        else:
            pages = zip(days, kinds, cols[4], strict=True)
            _tally(self.pages.setdefault(source, {}), pages, nbytes)

    def add_extra(self, extra: Iterable[Sequence[Any]]) -> None:
        """Add bandwidth-only totals: ``[day, source, kind, requests, bytes]``."""
        for day, source, kind, hits, nbytes in extra:
            _merge(self.extra, (str(day), source, kind), (int(hits), int(nbytes)))

    def params(self) -> list[str]:
        """The array literals the rollup statement unnests, in :data:`_PARAMS` order."""
        # daily_package_stats: downloads per file (time saved is looked up per file),
        # then searches, project and JSON hits per project; bots left out.
        pkg: dict[tuple[str, ...], list[int]] = {}
        for (day, kind, package, filename), (hits, nbytes) in self.files.items():
            if kind != _BOT:
                key = (_literal(day), _literal(package), _literal(filename))
                _merge(pkg, key, (hits, nbytes, 0, 0, 0))
        for col, counts in (
            (2, self.names),
            (3, {k: v[0] for k, v in self.pages.get("project", {}).items()}),
            (4, {k: v[0] for k, v in self.pages.get("json", {}).items()}),
        ):
            for (day, kind, package), hits in counts.items():
                if kind != _BOT:
                    tot = pkg.setdefault((_literal(day), _literal(package), "NULL"), [0] * 5)
                    tot[col] += hits
        client: dict[tuple[str, ...], list[int]] = {}
        for source, tallies in self.clients.items():
            for (day, kind, desc), sums in tallies.items():
                _merge(client, (_literal(day), source, _literal(kind), *_desc(desc)), sums)
        web: dict[tuple[str, ...], list[int]] = {}
        for source, tallies in self.pages.items():
            for (day, kind, page), sums in tallies.items():
                _merge(web, (_literal(day), source, _literal(page), _literal(kind)), sums)
        for (xday, xsource, xkind), sums in self.extra.items():
            _merge(web, (_element(xday), _element(xsource), '""', _element(xkind)), sums)
        hour: dict[tuple[str, ...], list[int]] = {}
        for source, by_hour in self.hours.items():
            for (stamp, hkind), sums in by_hour.items():
                # The time is 'YYYY-MM-DDTHH' or 'YYYY-MM-DD HH', always UTC (+00).
                start = f'"{stamp[:10].decode()} {stamp[11:13].decode()}:00+00"'
                _merge(hour, (start, source, _literal(hkind)), sums)
        for rollup in self.rollups:
            _add_rollup(rollup, pkg, client, web, hour)
        return [
            *_arrays(pkg, 3, 5),
            *_arrays(client, 13, 2),
            *_arrays(web, 4, 2),
            *_arrays(hour, 3, 2),
        ]


#: Column of daily_package_stats' aggregate (downloads, bytes, searches, project, JSON hits)
#: each source adds its requests to; web hits go to daily_web_stats only.
_PKG_COL = {"search": 2, "project": 3, "json": 4}


def _add_rollup(
    rollup: Mapping[str, Any],
    pkg: dict[tuple[str, ...], list[int]],
    client: dict[tuple[str, ...], list[int]],
    web: dict[tuple[str, ...], list[int]],
    hour: dict[tuple[str, ...], list[int]],
) -> None:
    """Merge a batch's aggregates (names and client cells as in its rows) into the
    statement's aggregate rows, exactly as :meth:`BatchRollup.params` merges its tallies."""
    rollup = parse_rollup(rollup)
    for hits, nbytes, source, day, kind, cell in rollup["names"]:
        d = _literal(day)
        if source == b"download":
            if kind != _BOT:
                package, filename = cell.split(b"\t")
                _merge(pkg, (d, _literal(package), _literal(filename)), (hits, nbytes, 0, 0, 0))
            continue
        src = source.decode()
        if kind != _BOT and src != "web":
            tot = pkg.setdefault((d, _literal(cell), "NULL"), [0] * 5)
            tot[_PKG_COL[src]] += hits
        if src != "search":
            _merge(web, (d, src, _literal(cell), _literal(kind)), (hits, nbytes))
    for hits, nbytes, source, day, kind, desc in rollup["clients"]:
        key = (_literal(day), source.decode(), _literal(kind), *_desc(desc))
        _merge(client, key, (hits, nbytes))
    for hits, nbytes, source, stamp, kind in rollup["hours"]:
        start = f'"{stamp[:10].decode()} {stamp[11:13].decode()}:00+00"'
        _merge(hour, (start, source.decode(), _literal(kind)), (hits, nbytes))


def _arrays(rows: dict[tuple[str, ...], list[int]], nkeys: int, nvalues: int) -> list[str]:
    """One array literal per key column (elements already quoted) and per value column."""
    if not rows:
        return ["{}"] * (nkeys + nvalues)
    keys = list(zip(*rows, strict=True))
    values = list(zip(*rows.values(), strict=True))
    return ["{" + ",".join(col) + "}" for col in keys] + [
        "{" + ",".join(map(str, col)) + "}" for col in values
    ]


_SUMS = (("hits", "bigint"), ("bytes", "bigint"))
#: The rollup statement's inputs: (array, element type), in BatchRollup.params() order.
_INPUTS: tuple[tuple[str, str], ...] = (
    ("p_day", "date"),
    ("p_package", "text"),
    ("p_filename", "text"),
    *((f"p_{c}", "bigint") for c in ("dl", "bytes", "se", "ph", "js")),
    ("c_day", "date"),
    ("c_source", "text"),
    ("c_kind", "text"),
    *((f"c_{c}", "text") for c in _CLIENT_FIELDS),
    ("c_hits", "bigint"),
    ("c_bytes", "bigint"),
    ("w_day", "date"),
    ("w_source", "text"),
    ("w_page", "text"),
    ("w_kind", "text"),
    ("w_hits", "bigint"),
    ("w_bytes", "bigint"),
    ("h_hour", "timestamptz"),
    ("h_source", "text"),
    ("h_kind", "text"),
    ("h_hits", "bigint"),
    ("h_bytes", "bigint"),
)
_PKG_COLS = ("downloads", "bytes_sent", "seconds_saved", "searches", "project_hits", "json_hits")
_MONTH_COLS = ("downloads", "searches", "project_hits", "json_hits")


def _unnest(prefix: str) -> str:
    """unnest() of the inputs of one rollup, each a text parameter cast to its array type."""
    cols = [(i, name, kind) for i, (name, kind) in enumerate(_INPUTS, 1) if name[0] == prefix]
    args = ", ".join(f"${i}::{kind}[]" for i, _, kind in cols)
    return f"unnest({args}) AS {prefix}({', '.join(name[2:] for _, name, _ in cols)})"


def _set_add(table: str, cols: Sequence[str]) -> str:
    return ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in cols)


def _rollup_statement() -> str:
    """The statement adding aggregates to every rollup: one upsert per aggregate row."""
    dims = ", ".join(_CLIENT_FIELDS)
    pkg_cols = ", ".join(_PKG_COLS)
    month_cols = ", ".join(_MONTH_COLS)
    return f"""
    WITH pkg_rows AS MATERIALIZED (
        -- Time saved: the build duration of each file downloaded, looked up once per file.
        SELECT p.day, p.package, sum(p.dl) AS downloads, sum(p.bytes) AS bytes_sent,
               coalesce(sum(p.dl * extract(epoch FROM b.duration)), 0) AS seconds_saved,
               sum(p.se) AS searches, sum(p.ph) AS project_hits, sum(p.js) AS json_hits
        FROM {_unnest("p")}
        LEFT JOIN files f ON f.filename = p.filename
        LEFT JOIN builds b ON b.build_id = f.build_id
        GROUP BY p.day, p.package
    ),
    pkg AS (
        INSERT INTO daily_package_stats (day, package, {pkg_cols})
        SELECT day, package, {pkg_cols} FROM pkg_rows
        ON CONFLICT (day, package) DO UPDATE SET {_set_add("daily_package_stats", _PKG_COLS)}
    ),
    tot AS (
        INSERT INTO daily_totals (day, {pkg_cols})
        SELECT day, {", ".join(f"sum({c})" for c in _PKG_COLS)} FROM pkg_rows GROUP BY day
        ON CONFLICT (day) DO UPDATE SET {_set_add("daily_totals", _PKG_COLS)}
    ),
    mon AS (
        INSERT INTO monthly_package_stats (month, package, {month_cols})
        SELECT date_trunc('month', day)::date, package,
               {", ".join(f"sum({c})" for c in _MONTH_COLS)}
        FROM pkg_rows GROUP BY 1, 2
        ON CONFLICT (month, package) DO UPDATE SET {_set_add("monthly_package_stats", _MONTH_COLS)}
    ),
    client AS (
        INSERT INTO daily_client_stats (day, source, kind, {dims}, hits, bytes_sent)
        SELECT * FROM {_unnest("c")}
        ON CONFLICT ON CONSTRAINT pk_daily_client_stats
        DO UPDATE SET {_set_add("daily_client_stats", ("hits", "bytes_sent"))}
    ),
    web AS (
        INSERT INTO daily_web_stats (day, source, page, kind, hits, bytes_sent)
        SELECT * FROM {_unnest("w")}
        ON CONFLICT (day, source, page, kind)
        DO UPDATE SET {_set_add("daily_web_stats", ("hits", "bytes_sent"))}
    ),
    hour AS (
        INSERT INTO hourly_totals (hour, source, kind, hits, bytes_sent)
        SELECT * FROM {_unnest("h")}
        ON CONFLICT (hour, source, kind)
        DO UPDATE SET {_set_add("hourly_totals", ("hits", "bytes_sent"))}
    )
    SELECT 1
    """


# The rollup statement is prepared once per session: planning it (a dozen tables)
# costs more than running it on a batch's aggregates.  A prepared statement is not
# transactional (a rollback keeps it), so a session that has it keeps it.
_ROLLUP_NAME = "piw_log_rollup"
_PREPARE = f"PREPARE {_ROLLUP_NAME} ({', '.join(['text'] * len(_INPUTS))}) AS {_rollup_statement()}"
_EXECUTE = f"EXECUTE {_ROLLUP_NAME} ({', '.join(['%s'] * len(_INPUTS))})"
_PREPARED: weakref.WeakSet[Any] = weakref.WeakSet()
_RECORD = text(
    "INSERT INTO log_batches (source, batch_id, stored) VALUES (:s, :b, :n) "
    "ON CONFLICT DO NOTHING RETURNING 1"
)
_RECORDED = text("SELECT stored FROM log_batches WHERE source = :s AND batch_id = :b")


@dataclass(frozen=True)
class LogBatch:
    """One packed batch from piw-logger (the BATCH message's ``tables`` and ``extra``).

    ``source`` (the logger's identity) and ``batch_id`` identify it for
    deduplication; without them the batch is not recorded in ``log_batches``.
    """

    tables: Mapping[str, bytes]
    extra: Sequence[Sequence[Any]] = ()
    source: bytes | None = None
    batch_id: int | None = None
    #: The batch's own rollup aggregates (BATCH ``rollup``), used instead of a tally of
    #: its rows; None: the rows are tallied here.
    rollup: Mapping[str, Any] | None = None

    @property
    def key(self) -> tuple[bytes, int] | None:
        if self.source is None or self.batch_id is None:
            return None
        return (self.source, self.batch_id)


def _result(batch: LogBatch) -> StoreResult:
    res = StoreResult()
    for table, rows in batch.tables.items():
        if rows:
            res.by_table[table] = rows.count(b"\n")
    res.extra = sum(int(e[3]) for e in batch.extra)
    res.stored = sum(res.by_table.values()) + res.extra
    return res


def store_log_batches(
    conn: Connection, batches: Sequence[LogBatch], *, timings: dict[str, float] | None = None
) -> list[StoreResult]:
    """Store packed log batches and add them to the rollups, all in one transaction.

    Each table's rows (COPY text, columns of ``protocols.LOG_TABLES``, times
    in UTC, as ``protocols.logger`` checks them) are COPYed straight into the
    table, once; what the batches add to each rollup (``daily_package_stats``
    without bots, ``daily_totals``, ``monthly_package_stats``,
    ``daily_client_stats``, ``daily_web_stats``, ``hourly_totals``) is
    tallied here and added by one prepared statement, one upsert per
    aggregate row.  The rollups are current as soon as the transaction
    commits, and equal what :func:`piwheels.db.stats.rollup_day` computes
    from the raw hits.  A row PostgreSQL refuses (a date such as February 30)
    fails the whole call with :class:`sqlalchemy.exc.DataError` or
    :class:`~sqlalchemy.exc.IntegrityError` and stores nothing.

    A batch with a ``source`` and ``batch_id`` is recorded in ``log_batches``
    in the same transaction as its rows; one recorded already (or earlier in
    *batches*) is not stored again: its result says ``duplicate``, with the
    count stored the first time.  So a resend after a lost ACK is exact, even
    across a master restart.

    With *timings*, seconds are added to its ``copy`` (wall), ``tally`` (CPU
    of this process) and ``statement`` (wall) keys.
    """
    results = [_result(b) for b in batches]
    with atomic(conn):
        new: list[LogBatch] = []
        first: dict[tuple[bytes, int], StoreResult] = {}
        for batch, res in zip(batches, results, strict=True):
            key = batch.key
            if key is None:
                new.append(batch)
                continue
            seen = first.get(key)
            if seen is None:
                # First, so a resend waits here for a first copy still being stored.
                params = {"s": key[0], "b": key[1], "n": res.stored}
                if conn.execute(_RECORD, params).first() is not None:
                    first[key] = res
                    new.append(batch)
                    continue
                stored = conn.execute(_RECORDED, {"s": key[0], "b": key[1]}).scalar_one()
                seen = first[key] = StoreResult(stored=int(stored), duplicate=True)
            res.stored, res.duplicate, res.extra = seen.stored, True, 0
            res.by_table.clear()
        if new:
            _store(conn, new, timings)
    return results


def _store(conn: Connection, batches: Sequence[LogBatch], timings: dict[str, float] | None) -> None:
    t0 = time.perf_counter()
    raw = conn.connection.dbapi_connection
    assert raw is not None
    cur = raw.cursor()
    sql = ""
    try:
        for table, cols in LOG_TABLES.items():
            data = [rows for b in batches if (rows := b.tables.get(table))]
            if data:
                sql = f"COPY {table} ({', '.join(cols)}) FROM STDIN"
                buf = io.BytesIO(data[0] if len(data) == 1 else b"".join(data))
                cur.copy_expert(sql, buf, _COPY_CHUNK)
        t1, c1 = time.perf_counter(), time.process_time()
        tally = BatchRollup()
        for b in batches:
            if b.rollup is not None:
                tally.add_rollup(b.rollup)
            else:
                for table, rows in b.tables.items():
                    if rows:
                        tally.add_rows(table, rows)
            tally.add_extra(b.extra)
        params = tally.params()
        t2, c2 = time.perf_counter(), time.process_time()
        if raw not in _PREPARED:
            sql = _PREPARE
            cur.execute(sql)
            _PREPARED.add(raw)
        sql = _EXECUTE
        cur.execute(sql, params)
    except psycopg2.Error as exc:
        # As SQLAlchemy would wrap it: DataError, IntegrityError, OperationalError...
        raise DBAPIError.instance(sql, None, exc, psycopg2.Error) from exc
    finally:
        cur.close()
    if timings is not None:
        timings["copy"] = timings.get("copy", 0.0) + t1 - t0
        timings["tally"] = timings.get("tally", 0.0) + c2 - c1
        timings["statement"] = timings.get("statement", 0.0) + time.perf_counter() - t2


def store_log_batch(
    conn: Connection,
    tables: Mapping[str, bytes],
    extra: Sequence[Sequence[Any]] = (),
    *,
    source: bytes | None = None,
    batch_id: int | None = None,
    rollup: Mapping[str, Any] | None = None,
    timings: dict[str, float] | None = None,
) -> StoreResult:
    """Store one packed log batch (see :func:`store_log_batches`) in one transaction."""
    batch = LogBatch(tables, extra, source, batch_id, rollup)
    return store_log_batches(conn, [batch], timings=timings)[0]
