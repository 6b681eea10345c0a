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
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .. import protocols
from .anonymise import _canonical
from .classify import BOT, INDEX, OTHER, AccessRecord, _ua_tail
from .parse import MAX_LINE, MalformedLine, _unescape_json, unescape_log_field
from .useragent import AGENT_BOT, AGENT_DIRECT, decode_user_agent

if TYPE_CHECKING:
    from .reader import LogReader

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
_WITH_INFO = frozenset({"downloads", "searches"})
# Fields 9 to 18 of an AccessRecord are the client description, in LOG_TABLES' order.
_INFO = slice(9, 19)

# The fast path (BatchEncoder.add_lines) takes the common, plain shape of
# each format straight from the line's bytes (no decode of the whole line).
# nginx's JSON lines are cut by one C-level split exactly as LogParser's
# fast path cuts them (escape=json writes every '"' inside a value as \",
# so ',"' only occurs between fields): a regex over the ~600 escaped
# characters of a pip user agent costs 7 us, the split 1.  Combined lines
# are matched by one regex that yields every field at once.  Anything else
# (escapes in the address, method or URI, other key orders, other formats,
# malformed lines) goes through LogParser and the Classifier, which judge it
# exactly as before (and count it if malformed).
_Q = rb'[^"\\]*(?:\\.[^"\\]*)*'  # a quoted value, escapes allowed
_JSON_PARTS = 13
_UTC_SECOND = re.compile(rb"\d{4}-\d\d-\d\dT(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d\+00:00")
_JSON_ENDS = (b'"}', b'"}\n', b'"}\r\n')
# ":MM:SS" of every second of an hour (a leap second goes the general way, as before).
_MIN_SEC = frozenset(f":{m:02d}:{sec:02d}".encode() for m in range(60) for sec in range(60))
# nginx's JSON lines: one match from the start up to the user agent's value, which
# yields the fields used and checks their keys and shape (a UTC time's minutes and
# seconds, digits, no escapes where the fast path takes the raw bytes); the user agent
# (~600 escaped characters of a pip line, too many for a regex to walk cheaply) is cut
# by one find.  Groups: UTC time to the second and its hour, or any other time text,
# then address, method, URI, status and bytes.
_FAST_JSON = re.compile(
    rb'\{"time":"(?:((\d{4}-\d\d-\d\dT\d\d):[0-5]\d:[0-5]\d)\+00:00|([^"\\]*+))",'
    rb'"addr":"([^"]*+)","method":"([^"]*+)","uri":"([^"]*+)","proto":"[^"]*+",'
    rb'"status":(\d++),"bytes":(\d{1,15}+),"body_bytes":[^,"]*+,"referer":"'
    + rb'[^"\\]*+(?:\\.[^"\\]*+)*+","ua":"'
)
_FAST_COMBINED = re.compile(
    rb'([!-~]+) [!-~]+ (?:[!-~]+|"[^"]*") \[([^\]]*)\] "([A-Z]{1,16}) ([!#-\[\]-~]+) '
    rb'HTTP/[0-9.]{1,5}" (\d{3}) (\d{1,15}|-)(?: "' + _Q + rb'" "(' + _Q + rb')")?'
    rb"(?: [^\r\n]*)?\r?\n?",
    re.S,
)


def _cell(value: str | None) -> str:
    return "\\N" if value is None else value.translate(_ESCAPE)


def _add(acc: dict[Any, list[int]], key: Any, n: int) -> None:
    tot = acc.get(key)
    if tot is None:
        acc[key] = [1, n]
    else:
        tot[0] += 1
        tot[1] += n


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
        self._fast_reader: LogReader | None = None
        self._fast_reset()
        self._reset()

    def _reset(self) -> None:
        self.rows: dict[str, list[str]] = {t: [] for t in protocols.LOG_TABLES}
        self.extra: dict[tuple[str, str, str], list[int]] = {}
        # What the rows add to the rollups (see protocols.logger's BATCH "rollup"),
        # [requests, bytes] per (table, hour, kind), (table, day, kind, name cell(s))
        # and (table, day, kind, client cells), tallied as each row is made.
        self.hours: dict[tuple[str, str, str], list[int]] = {}
        self.names: dict[tuple[str, str, str, str], list[int]] = {}
        self.clients: dict[tuple[str, str, str, str], list[int]] = {}
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
        n = int(r.bytes_sent)
        head = f"{stamp}\t{self._client(r.client)}\t{ckind}\t{n}\t"
        info = None
        if table == "downloads":
            cell = f"{self._text(r.package)}\t{self._text(r.filename)}"  # type: ignore[arg-type]
            info = self._info(r)
            self.rows[table].append(f"{head}{cell}\t{info}\n")
        elif table == "searches":
            cell, info = self._text(name), self._info(r)
            self.rows[table].append(f"{head}{cell}\t{info}\n")
        else:
            cell = self._text(name)
            self.rows[table].append(f"{head}{cell}\n")
        _add(self.hours, (table, stamp[:13], ckind), n)
        _add(self.names, (table, stamp[:10], ckind, cell), n)
        if info is not None:
            _add(self.clients, (table, stamp[:10], ckind, info), n)

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

    # -- the fast path: lines straight to COPY rows ------------------------------

    def add_lines(self, lines: Iterable[bytes], reader: LogReader) -> None:
        """Parse, classify and add raw log *lines*; the same rows as ``extend(reader.records())``.

        Lines of the common shape of each format are matched by one regex and
        turned into a row from caches keyed by the raw bytes of each field:
        the time (COPY stamp and UTC day), the user agent (client kind and the
        escaped client columns), the URI (table and escaped name cells) and
        the address per day (the stored client).  No datetime, ParsedLine or
        AccessRecord is built for them.  Any other line goes to *reader*
        (``LogReader.record``), which counts and samples it if malformed.
        """
        if self._fast_reader is not reader:
            self._fast_reader = reader
            self._fast_reset()
        stats = reader.stats
        clf_match = _FAST_COMBINED.fullmatch
        json_match = _FAST_JSON.match
        times = self._fast_times
        hours = self._fast_days
        json_agents, clf_agents = self._json_agents, self._clf_agents
        routes, clients = self._fast_routes, self._fast_clients
        rows = self.rows
        extra = self.extra
        r_hours, names, clients_t = self.hours, self.names, self.clients
        fast = recs = skipped = 0  # added to the counters at the end
        tm: tuple[str, str, int, datetime] | None
        for line in lines:
            if len(line) > MAX_LINE:
                self._slow(line, reader)
                continue
            m = json_match(line)
            if m is not None:
                # The user agent ends where the last three fields begin: three rfinds
                # from the end (escape=json writes every '"' inside a value as \", so ',"'
                # only occurs between fields) cut where rsplit(b',"', 3) would, reading
                # only those short fields and copying nothing.  A user agent is only
                # cached once seen free of ',"' (_fast_agent): so a line that the cache
                # knows has LogParser's 13 fields.  The match lets escapes through in the
                # address, method, URI and protocol (a class without the backslash costs a
                # third less to walk): one find up to the status sends such a line the
                # general way.
                s = m.end()
                last = line.rfind(b',"')
                k = line.rfind(b',"', 0, last) if last > 0 else -1
                k = line.rfind(b',"', 0, k) if k > 0 else -1
                if (
                    k <= s
                    or line[k - 1] != 34  # '"'
                    or not line.endswith(_JSON_ENDS, last + 2)
                    or line.find(b"\\", 0, m.start(7)) >= 0
                ):
                    self._slow(line, reader)
                    continue
                t19, h13, t, addr, method, uri, status, nbytes = m.groups()
                ua = line[s : k - 1]
                agents = json_agents
                if t19 is not None and (hour := hours.get(h13)) is not None:
                    # A checked UTC hour (see _fast_time); minutes and seconds were checked
                    # by the match: the stamp is the first 19 characters.
                    stamp = t19.decode() + "+00"
                    day, ordinal, when = hour
                    tm = None
                else:
                    if t19 is not None:
                        t = t19 + b"+00:00"
                    tm = times.get(t)
                    if tm is None:
                        tm = self._fast_time(t, True)
                        if tm is None:
                            self._slow(line, reader)
                            continue
            elif line[:1] == b"{":
                self._slow(line, reader)
                continue
            else:
                m = clf_match(line)
                if m is None:
                    self._slow(line, reader)
                    continue
                addr, t, method, uri, status, nbytes, ua = m.groups()
                if ua is None:
                    ua = b"-"
                agents = clf_agents
                tm = times.get(t)
                if tm is None:
                    tm = self._fast_time(t, False)
                    if tm is None:
                        self._slow(line, reader)
                        continue
            if tm is not None:
                stamp, day, ordinal, when = tm
            ag = agents.get(ua)
            if ag is None:
                ag = self._fast_agent(ua, agents is json_agents)
                if ag is None:
                    self._slow(line, reader)
                    continue
            rt = routes.get(uri)
            if rt is None:
                rt = self._fast_route(uri)
            fast += 1
            agent, ckind, info = ag
            rkind, table, cell = rt
            if agent != AGENT_BOT and (
                method != b"GET"
                or (status != b"200" and int(status) != 200)
                or (rkind == INDEX and agent == AGENT_DIRECT)
            ):
                rkind, table = OTHER, None
            if table is None:
                recs += 1
                if rkind not in _EXTRA:
                    skipped += 1
                    continue
                key = (day, rkind, ckind)
                tot = extra.get(key)
                n = int(nbytes) if nbytes != b"-" else 0
                if tot is None:
                    extra[key] = [1, n]
                else:
                    tot[0] += 1
                    tot[1] += n
                continue
            if cell is None:
                recs += 1
                skipped += 1
                continue
            ck = (ordinal, addr)
            client = clients.get(ck)
            if client is None:
                client = self._fast_client(ck, when)
            recs += 1
            # Digits as they are, unless a leading zero or "-" needs int()'s spelling.
            if nbytes[:1] not in (b"0", b"-"):
                n_s = nbytes.decode()
                n = int(n_s)
            else:
                n = 0 if nbytes == b"-" else int(nbytes)
                n_s = str(n)
            # The rollup tallies (as _add, inlined: this runs for every row).
            # The tallies are spelt out, not a helper: a call per tally costs this loop
            # (run for every line of every log) more than the tally itself.
            key3 = (table, stamp[:13], ckind)
            tot = r_hours.get(key3)
            if tot is None:
                r_hours[key3] = [1, n]
            else:
                tot[0] += 1
                tot[1] += n
            key4 = (table, day, ckind, cell)
            tot = names.get(key4)
            if tot is None:
                names[key4] = [1, n]
            else:
                tot[0] += 1
                tot[1] += n
            if info is None or table not in _WITH_INFO:
                rows[table].append(f"{stamp}\t{client}\t{ckind}\t{n_s}\t{cell}\n")
            else:
                rows[table].append(f"{stamp}\t{client}\t{ckind}\t{n_s}\t{cell}\t{info}\n")
                key4 = (table, day, ckind, info)
                tot = clients_t.get(key4)
                if tot is None:
                    clients_t[key4] = [1, n]
                else:
                    tot[0] += 1
                    tot[1] += n
        self.records += recs
        self.skipped += skipped
        stats.lines += fast
        stats.parsed += fast

    def _slow(self, line: bytes, reader: LogReader) -> None:
        rec = reader.record(line)
        if rec is not None:
            self.add(rec)

    def _fast_reset(self) -> None:
        # (stamp, UTC day text, day ordinal, UTC datetime) per raw time text.
        self._fast_times: dict[bytes, tuple[str, str, int, datetime]] = {}
        # (day text, ordinal, UTC midnight) per checked raw hour ("YYYY-MM-DDTHH").
        self._fast_days: dict[bytes, tuple[str, int, datetime]] = {}
        # (agent, client kind, escaped client columns or None) per raw UA.
        self._json_agents: dict[bytes, tuple[str, str, str | None]] = {}
        self._clf_agents: dict[bytes, tuple[str, str, str | None]] = {}
        # (route kind, hit table or None, escaped name cell(s) or None) per raw URI.
        self._fast_routes: dict[bytes, tuple[str, str | None, str | None]] = {}
        # Stored client per (day ordinal, raw address): hashes are salted per day.
        self._fast_clients: dict[tuple[int, bytes], str] = {}
        # The anonymiser's hasher per day ordinal; canonical address per raw address.
        self._hashers: dict[int, Callable[[bytes], str]] = {}
        self._canonical: dict[bytes, bytes] = {}

    def _fast_time(self, raw: bytes, is_json: bool) -> tuple[str, str, int, datetime] | None:
        times = self._fast_times
        if len(times) >= self._CACHE_LIMIT:
            times.clear()
        if is_json and raw[19:] == b"+00:00" and raw[13:19] in _MIN_SEC:
            # nginx's $time_iso8601 in UTC: nearly every line has a second of its own,
            # so only the hour (raw[:13]) is checked, once, as a date and an hour
            # (Feb 30 is not a date); minutes and seconds are one set lookup, and the
            # stamp is the first 19 characters.  The result is not cached (no reuse).
            hour = self._fast_days.get(raw[:13])
            if hour is None:
                if not _UTC_SECOND.fullmatch(raw):
                    return None
                try:
                    d = date.fromisoformat(raw[:10].decode())
                except ValueError:
                    return None
                midnight = datetime(d.year, d.month, d.day, tzinfo=UTC)
                if len(self._fast_days) >= self._CACHE_LIMIT:
                    self._fast_days.clear()
                hour = self._fast_days[raw[:13]] = (d.isoformat(), d.toordinal(), midnight)
            return (raw[:19].decode() + "+00", hour[0], hour[1], hour[2])
        parser = self._fast_reader.parser  # type: ignore[union-attr]
        text = raw.decode("utf-8", "replace")
        try:
            when = parser._iso_time(text) if is_json else parser._clf_time(text)
        except MalformedLine:
            return None
        stamp = self._stamp(when)
        hit = times[raw] = (stamp, stamp[:10], when.toordinal(), when)
        return hit

    def _fast_agent(self, raw: bytes, is_json: bool) -> tuple[str, str, str | None] | None:
        if is_json and b',"' in raw:
            # Not one field (add_lines cuts the user agent from the end): LogParser judges it.
            return None
        text = raw.decode("utf-8", "replace")
        if is_json:
            try:
                ua = _unescape_json(text)
            except MalformedLine:
                return None
        else:
            ua = "" if text == "-" else unescape_log_field(text)
        decoded = decode_user_agent(ua)
        tail = _ua_tail(decoded)
        if decoded.agent == AGENT_BOT:
            ckind = BOT
        else:
            inst = tail[7]
            ckind = "direct" if inst is None else KIND_OF_INSTALLER.get(inst, "other")
        info = "\t".join(map(_cell, tail[:10]))
        agents = self._json_agents if is_json else self._clf_agents
        if len(agents) >= self._CACHE_LIMIT:
            agents.clear()
        hit = agents[raw] = (decoded.agent, ckind, info)
        return hit

    def _fast_route(self, raw: bytes) -> tuple[str, str | None, str | None]:
        r = self._fast_reader.classifier.route(raw.decode("utf-8", "replace"))  # type: ignore[union-attr]
        table = TABLE_OF_KIND.get(r.kind)
        cell: str | None = None
        if table == "downloads":
            if r.filename and r.package:
                cell = f"{_cell(r.package)}\t{_cell(r.filename)}"
        elif table == "web_hits":
            cell = _cell(r.page) if r.page else None
        elif table is not None:
            cell = _cell(r.package) if r.package else None
        if len(self._fast_routes) >= self._CACHE_LIMIT:
            self._fast_routes.clear()
        hit = self._fast_routes[raw] = (r.kind, table, cell)
        return hit

    def _fast_client(self, key: tuple[int, bytes], when: datetime) -> str:
        anonymiser = self._fast_reader.classifier.anonymiser  # type: ignore[union-attr]
        if anonymiser.mode == "hash":
            # Anonymiser.client's value, without its cache (this one is keyed alike): each
            # client of the day is new, and its hash (hex) needs no check.  The canonical
            # address is kept across days (a client comes back), the hasher per day.
            canonical = self._canonical.get(key[1])
            if canonical is None:
                if len(self._canonical) >= self._CACHE_LIMIT:
                    self._canonical.clear()
                canonical = _canonical(key[1].decode("utf-8", "replace"))
                self._canonical[key[1]] = canonical
            hasher = self._hashers.get(key[0])
            if hasher is None:
                if len(self._hashers) > 64:
                    self._hashers.clear()
                hasher = self._hashers[key[0]] = anonymiser.hasher(when.date())
            client = hasher(canonical)
        else:
            addr = key[1].decode("utf-8", "replace")
            client = self._client(anonymiser.client(addr, when))
        if len(self._fast_clients) >= self._CACHE_LIMIT:
            self._fast_clients.clear()
        self._fast_clients[key] = client
        return client

    def __len__(self) -> int:
        return self.records

    def take(self) -> dict[str, Any]:
        """The BATCH payload (without ``batch_id``) of what was added; starts a new batch."""
        src = protocols.LOG_SOURCES
        payload = {
            "records": self.records,
            "tables": {
                t: "".join(rows).encode("utf-8", "replace") for t, rows in self.rows.items() if rows
            },
            "extra": [[d, s, k, h, b] for (d, s, k), (h, b) in self.extra.items()],
            "rollup": {
                "hours": "".join(
                    f"{h}\t{b}\t{src[t]}\t{hr}\t{k}\n" for (t, hr, k), (h, b) in self.hours.items()
                ).encode("utf-8", "replace"),
                "names": "".join(
                    f"{h}\t{b}\t{src[t]}\t{d}\t{k}\t{c}\n"
                    for (t, d, k, c), (h, b) in self.names.items()
                ).encode("utf-8", "replace"),
                "clients": "".join(
                    f"{h}\t{b}\t{src[t]}\t{d}\t{k}\t{c}\n"
                    for (t, d, k, c), (h, b) in self.clients.items()
                ).encode("utf-8", "replace"),
            },
        }
        self._reset()
        return payload


def encode(records: Iterable[AccessRecord]) -> dict[str, Any]:
    """The BATCH payload (without ``batch_id``) of *records*."""
    enc = BatchEncoder()
    enc.extend(records)
    return enc.take()
