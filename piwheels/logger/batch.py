"""Records into the packed batch the master stores with COPY (``protocols.logger`` BATCH).

A batch carries, per hit table, its rows already in PostgreSQL's COPY text
format (columns of ``protocols.LOG_TABLES``), and the bandwidth of requests no
hit table keeps as totals per UTC day, source and client kind.  The master
checks each table's rows with one pattern match and COPYs them as they are:
no value is encoded, decoded or checked one by one on the wire or the master.

Where a record goes:

* ``download``, ``index``, ``project``, ``json`` and ``page`` records go to
  ``downloads``, ``searches``, ``project_hits``, ``json_hits`` and
  ``web_hits``; a bot's record goes to the table of what it fetched
  (``target``) with client kind ``bot``;
* ``metadata``, ``index_root`` and ``other`` (a bot's too) add to the
  bandwidth totals;
* a record that cannot be stored (a hit without its package or page) is
  skipped and counted.

The client kind of a hit is ``bot``, ``direct`` (no installer), ``pip``,
``uv`` or ``other`` (another installer).  A client value that is neither a
salted hash nor a network prefix is stored empty, so no raw address leaves
the logger.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import protocols
from .classify import AccessRecord

__all__ = ["KIND_OF_INSTALLER", "TABLE_OF_KIND", "BatchEncoder", "encode"]

#: Hit table of each record kind (a bot's record goes by its target).
TABLE_OF_KIND = {
    "download": "downloads",
    "index": "searches",
    "project": "project_hits",
    "json": "json_hits",
    "page": "web_hits",
}
#: Client kind of each installer name the user agent gives.
KIND_OF_INSTALLER = {"pip": "pip", "uv": "uv"}
_EXTRA = frozenset(protocols.LOG_EXTRA_SOURCES)
_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": ""})
_CLIENT_RE = re.compile(r"(?:[0-9a-f]{16,128}|[0-9A-Fa-f.:]{2,39}/\d{1,3})?")
_ZERO = timedelta(0)
# Fields 9 to 18 of an AccessRecord are the client description, in LOG_TABLES' order.
_INFO = slice(9, 19)


def _cell(value: str | None) -> str:
    return "\\N" if value is None else value.translate(_ESCAPE)


class BatchEncoder:
    """Accumulates records as COPY text per table; :meth:`take` returns the batch.

    Rows of a log repeat the same times, clients, targets and client
    descriptions, so each distinct value is formatted once (caches are
    bounded) and a row is one f-string over cached cells.
    """

    _CACHE_LIMIT = 50_000

    def __init__(self) -> None:
        self._times: dict[datetime, str] = {}
        self._infos: dict[tuple[Any, ...], str] = {}
        self._texts: dict[str, str] = {}
        self._clients: dict[str, str] = {}
        self.bad_clients = 0
        self._reset()

    def _reset(self) -> None:
        self.rows: dict[str, list[str]] = {t: [] for t in protocols.LOG_TABLES}
        self.extra: dict[tuple[str, str, str], list[int]] = {}
        self.records = 0
        self.skipped = 0

    def _stamp(self, when: datetime) -> str:
        stamp = self._times.get(when)
        if stamp is None:
            if len(self._times) >= self._CACHE_LIMIT:
                self._times.clear()
            utc = when if when.utcoffset() == _ZERO else when.astimezone(UTC)
            stamp = self._times[when] = utc.replace(tzinfo=None).isoformat() + "+00"
        return stamp

    def _text(self, value: str) -> str:
        cell = self._texts.get(value)
        if cell is None:
            if len(self._texts) >= self._CACHE_LIMIT:
                self._texts.clear()
            cell = self._texts[value] = _cell(value)
        return cell

    def _client(self, value: str | None) -> str:
        client = self._clients.get(value or "")
        if client is None:
            if len(self._clients) >= self._CACHE_LIMIT:
                self._clients.clear()
            client = value or ""
            if not _CLIENT_RE.fullmatch(client):
                client = ""
            self._clients[value or ""] = client
        if value and not client:
            self.bad_clients += 1
        return client

    def add(self, r: AccessRecord) -> None:
        """Add one record to the batch being built."""
        self.records += 1
        kind = r.kind
        if kind == "bot":
            where, ckind = r.target, "bot"
        else:
            where = kind
            inst = r.installer_name
            ckind = "direct" if inst is None else KIND_OF_INSTALLER.get(inst, "other")
        table = TABLE_OF_KIND.get(where)
        stamp = self._stamp(r.time)
        if table is None:
            if where not in _EXTRA:
                self.skipped += 1
                return
            key = (stamp[:10], where, ckind)
            tot = self.extra.get(key)
            if tot is None:
                self.extra[key] = [1, r.bytes_sent]
            else:
                tot[0] += 1
                tot[1] += r.bytes_sent
            return
        if table == "web_hits":
            name = r.page
        elif table == "downloads":
            name = r.filename and r.package
        else:
            name = r.package
        if not name:
            self.skipped += 1
            return
        head = f"{stamp}\t{self._client(r.client)}\t{ckind}\t{int(r.bytes_sent)}\t"
        if table == "downloads":
            self.rows[table].append(
                f"{head}{self._text(r.package)}\t{self._text(r.filename)}\t{self._info(r)}\n"  # type: ignore[arg-type]
            )
        elif table == "searches":
            self.rows[table].append(f"{head}{self._text(name)}\t{self._info(r)}\n")
        else:
            self.rows[table].append(f"{head}{self._text(name)}\n")

    def _info(self, r: AccessRecord) -> str:
        key: tuple[Any, ...] = tuple.__getitem__(r, _INFO)
        desc = self._infos.get(key)
        if desc is None:
            if len(self._infos) >= self._CACHE_LIMIT:
                self._infos.clear()
            desc = self._infos[key] = "\t".join(map(_cell, key))
        return desc

    def extend(self, records: Iterable[AccessRecord]) -> None:
        add = self.add
        for r in records:
            add(r)

    def __len__(self) -> int:
        return self.records

    def take(self) -> dict[str, Any]:
        """The BATCH payload (without ``batch_id``) of what was added; starts a new batch."""
        payload = {
            "records": self.records,
            "tables": {
                t: "".join(rows).encode("utf-8", "replace") for t, rows in self.rows.items() if rows
            },
            "extra": [[d, s, k, h, b] for (d, s, k), (h, b) in self.extra.items()],
        }
        self._reset()
        return payload


def encode(records: Iterable[AccessRecord]) -> dict[str, Any]:
    """The BATCH payload (without ``batch_id``) of *records*."""
    enc = BatchEncoder()
    enc.extend(records)
    return enc.take()
