"""Parse one access-log line into a :class:`ParsedLine`.

Two formats are read, detected per line:

* the JSON lines the project's nginx configuration writes (``log_format
  piwheels escape=json '{"time":"$time_iso8601",...}'``), with a fast path
  for that exact key order and a general :func:`json.loads` path for any
  other JSON object that carries the same facts;
* the standard "combined" format (Apache and nginx), including nginx's
  ``\\x22`` escapes and Apache's ``\\"`` escapes inside quoted fields.  In
  this format the byte count is the body size (``%b`` / ``$body_bytes_sent``).

A line that cannot be read raises :class:`MalformedLine` carrying a short
``reason`` that the reader counts.  Nothing else is raised for bad input.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from piwheels.errors import EX_DATAERR, PiwheelsError

__all__ = [
    "MAX_LINE",
    "LogParser",
    "MalformedLine",
    "ParsedLine",
    "parse_line",
]

#: Longest line accepted (characters); longer ones are malformed ("too-long").
MAX_LINE = 16384

# Reasons a line is malformed (the reader counts lines per reason).
EMPTY = "empty"
TOO_LONG = "too-long"
BAD_JSON = "json"
BAD_FIELDS = "fields"
BAD_TIME = "time"
BAD_FORMAT = "format"


class MalformedLine(PiwheelsError, ValueError):
    """A log line that is in no known format, or has a field that cannot be read."""

    exit_code = EX_DATAERR

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"malformed log line ({reason}): {detail}")


class ParsedLine(NamedTuple):
    """The facts of one request that the classifier needs, escapes undone."""

    time: datetime  # timezone-aware, UTC
    addr: str
    method: str
    uri: str
    status: int
    bytes_sent: int
    ua: str


# The fast path: nginx's escape=json never writes a bare '"' inside a value
# (it writes \"), so ',"' only ever occurs between fields and one C-level
# split cuts the line into its 13 "key":value parts.  That is about twice as
# fast as json.loads on a typical 700-character pip line.
_JSON_KEYS = (
    '{"time":"',
    'addr":"',
    'method":"',
    'uri":"',
    'proto":"',
    'status":',
    'bytes":',
    'body_bytes":',
    'referer":"',
    'ua":"',
    'accept":"',
    'rt":',
    'host":"',
)
_JSON_PARTS = len(_JSON_KEYS)
_JSON_ENDS = ('"}', '"}\n', '"}\r\n')

_BRACKET = r"\[(?P<time>[^\]]*)\]"
_COMBINED = re.compile(
    r"(?P<addr>\S+) \S+ (?:\S+|\"[^\"]*\") "
    + _BRACKET
    + r" \"(?P<request>(?:[^\"\\]|\\.)*)\" (?P<status>\d{3}) (?P<bytes>\d+|-)"
    + r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<ua>(?:[^"\\]|\\.)*)")?'
    # Trailing fields (virtual host, timings) that some formats add are allowed.
    + r"(?:\s.*)?"
)
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)", re.S)
_SIMPLE_ESCAPES = {
    b'"': b'"',
    b"\\": b"\\",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"b": b"\b",
    b"v": b"\v",
}
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


def _unescape_match(m: re.Match[bytes]) -> bytes:
    code = m.group(1)
    if len(code) == 3:
        return bytes((int(code[1:], 16),))
    return _SIMPLE_ESCAPES.get(code, code)


def unescape_log_field(value: str) -> str:
    """Undo nginx (``\\xHH``) and Apache (``\\"``, ``\\\\``, ``\\n``...) escapes."""
    if "\\" not in value:
        return value
    # Escapes stand for bytes (nginx escapes every byte >= 0x7f), so undo them
    # on bytes and decode the result as UTF-8.
    raw = value.encode("utf-8", "surrogateescape")
    return _ESCAPE.sub(_unescape_match, raw).decode("utf-8", "replace")


def _unescape_json(value: str) -> str:
    if "\\" not in value:
        return value
    try:
        result = json.loads(f'"{value}"')
    except ValueError:
        raise MalformedLine(BAD_JSON, "bad escape in a JSON string") from None
    assert isinstance(result, str)
    return result


def _split_request(request: str) -> tuple[str, str]:
    """``GET /x HTTP/1.1`` -> (``GET``, ``/x``); garbage -> ("", request)."""
    method, sep, rest = request.partition(" ")
    if not sep:
        return "", request
    uri, _, _proto = rest.rpartition(" ")
    if not uri:
        # "GET /x" without a protocol (HTTP/0.9)
        uri = rest
    return method, uri


def _int_field(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise MalformedLine(BAD_FIELDS, f"{name} is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value in ("", "-"):
            return 0
        try:
            return int(value)
        except ValueError:
            pass
    raise MalformedLine(BAD_FIELDS, f"{name} is not a number")


def _str_field(obj: dict[str, Any], *names: str) -> str:
    for name in names:
        value = obj.get(name)
        if isinstance(value, str):
            return value
    return ""


class LogParser:
    """Parses lines; keeps small caches of the values that repeat from line to line."""

    def __init__(self) -> None:
        self._last_iso = ""
        self._last_iso_dt = datetime(1970, 1, 1, tzinfo=UTC)
        self._last_clf = ""
        self._last_clf_dt = self._last_iso_dt
        # Escaped UA -> unescaped UA: a few thousand distinct agents make up
        # nearly every line, and unescaping a 600-character UA is not free.
        self._ua_cache: dict[str, str] = {}

    def parse(self, line: str) -> ParsedLine:
        """Parse one line (trailing newline allowed); raise :class:`MalformedLine`."""
        if len(line) > MAX_LINE:
            raise MalformedLine(TOO_LONG, f"{len(line)} characters")
        # The common case goes straight to the fast path: stripping first
        # would copy every line once more.
        if line[:2] == '{"' and line.endswith(_JSON_ENDS):
            return self._parse_json(line)
        line = line.strip()
        if not line:
            raise MalformedLine(EMPTY, "empty line")
        if line[0] == "{":
            return self._parse_json(line)
        return self._parse_combined(line)

    # -- JSON ------------------------------------------------------------

    def _parse_json(self, line: str) -> ParsedLine:
        p = line.split(',"')
        if (
            len(p) == _JSON_PARTS
            and line.endswith(_JSON_ENDS)
            and p[0][:9] == '{"time":"'
            and p[1][:7] == 'addr":"'
            and p[2][:9] == 'method":"'
            and p[3][:6] == 'uri":"'
            and p[5][:8] == 'status":'
            and p[6][:7] == 'bytes":'
            and p[9][:5] == 'ua":"'
        ):
            # Only the keys of the fields used are checked: a full check
            # costs more than the rest of the parse.
            try:
                status = int(p[5][8:])
                nbytes = int(p[6][7:])
            except ValueError:
                raise MalformedLine(BAD_FIELDS, "status or bytes is not a number") from None
            uri = p[3][6:-1]
            if "\\" in uri:
                uri = _unescape_json(uri)
            ua = p[9][5:-1]
            if "\\" in ua:
                cached = self._ua_cache.get(ua)
                if cached is None:
                    cached = _unescape_json(ua)
                    if len(self._ua_cache) > 20000:
                        self._ua_cache.clear()
                    self._ua_cache[ua] = cached
                ua = cached
            method = p[2][9:-1]
            if "\\" in method:
                method = _unescape_json(method)
            addr = p[1][7:-1]
            if "\\" in addr:
                addr = _unescape_json(addr)
            return ParsedLine(self._iso_time(p[0][9:-1]), addr, method, uri, status, nbytes, ua)
        return self._parse_json_general(line)

    def _parse_json_general(self, line: str) -> ParsedLine:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            raise MalformedLine(BAD_JSON, "not valid JSON") from None
        if not isinstance(obj, dict):
            raise MalformedLine(BAD_JSON, "JSON line is not an object")
        time = obj.get("time")
        if not isinstance(time, str):
            raise MalformedLine(BAD_FIELDS, "no time")
        if "status" not in obj:
            raise MalformedLine(BAD_FIELDS, "no status")
        status = _int_field(obj["status"], "status")
        nbytes = _int_field(obj.get("bytes", obj.get("bytes_sent", 0)), "bytes")
        method = _str_field(obj, "method")
        uri = _str_field(obj, "uri")
        if not method and not uri:
            request = _str_field(obj, "request", "req")
            if not request:
                raise MalformedLine(BAD_FIELDS, "no method and uri, nor request")
            method, uri = _split_request(request)
        return ParsedLine(
            self._iso_time(time),
            _str_field(obj, "addr", "remote_addr"),
            method,
            uri,
            status,
            nbytes,
            _str_field(obj, "ua", "user_agent"),
        )

    def _iso_time(self, text: str) -> datetime:
        if text == self._last_iso:
            return self._last_iso_dt
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise MalformedLine(BAD_TIME, f"bad time {text[:40]!r}") from None
        if dt.tzinfo is None:
            raise MalformedLine(BAD_TIME, f"time without a UTC offset {text[:40]!r}")
        if dt.tzinfo is not UTC:
            dt = dt.astimezone(UTC)
        self._last_iso = text
        self._last_iso_dt = dt
        return dt

    # -- combined ----------------------------------------------------------

    def _parse_combined(self, line: str) -> ParsedLine:
        m = _COMBINED.fullmatch(line)
        if m is None:
            raise MalformedLine(BAD_FORMAT, "neither JSON nor combined format")
        addr, time, request, status, nbytes, _referer, ua = m.groups()
        method, uri = _split_request(unescape_log_field(request))
        return ParsedLine(
            self._clf_time(time),
            addr,
            method,
            uri,
            int(status),
            0 if nbytes == "-" else int(nbytes),
            "" if ua is None or ua == "-" else unescape_log_field(ua),
        )

    def _clf_time(self, text: str) -> datetime:
        # "10/Oct/2000:13:55:36 -0700", read by hand: strptime is ~20x slower.
        if text == self._last_clf:
            return self._last_clf_dt
        try:
            if len(text) != 26 or text[2] != "/" or text[6] != "/" or text[20] != " ":
                raise ValueError(text)
            sign = {"+": 1, "-": -1}[text[21]]
            offset = timedelta(hours=int(text[22:24]), minutes=int(text[24:26]))
            dt = (
                datetime(
                    int(text[7:11]),
                    _MONTHS[text[3:6]],
                    int(text[0:2]),
                    int(text[12:14]),
                    int(text[15:17]),
                    int(text[18:20]),
                    tzinfo=UTC,
                )
                - sign * offset
            )
        except (ValueError, KeyError):
            raise MalformedLine(BAD_TIME, f"bad time {text[:40]!r}") from None
        self._last_clf = text
        self._last_clf_dt = dt
        return dt


_default = LogParser()


def parse_line(line: str) -> ParsedLine:
    """Parse one line with a module-wide parser (see :meth:`LogParser.parse`)."""
    return _default.parse(line)
