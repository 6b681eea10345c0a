"""Every message of every socket, in one place.

A :class:`Protocol` is written from the point of view of the side that binds
the socket: ``recv`` lists the messages it accepts and ``send`` the messages
it may send, each with a voluptuous schema for its payload (``None`` for a
message that carries nothing).  ``reversed(protocol)`` is the peer's view.
The transport checks every message against these on send and on receive, so
a message that is unknown, malformed, or on the wrong socket never reaches
the code that handles it.

Payloads are dicts with named fields.  The docs page of the protocol is
generated from this module (see :func:`describe`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from voluptuous import ALLOW_EXTRA, Invalid, Schema

#: Bumped whenever a message changes shape; a builder with another version is refused.
PROTOCOL_VERSION = 1

NAME_LIMIT = 200
FILENAME_LIMIT = 255
REASON_LIMIT = 500
LOG_LIMIT = 32 * 1024 * 1024


# -- field validators ---------------------------------------------------------
#
# Small callables rather than voluptuous' type coercions: they never coerce
# (a string is not an int), they refuse bools posing as ints, and their
# messages say what was expected.


def text(limit: int = NAME_LIMIT, *, empty: bool = True) -> Callable[[Any], str]:
    """A string of at most *limit* characters with no NUL."""

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"expected text, got {type(value).__name__}")
        if len(value) > limit:
            raise Invalid(f"text longer than {limit} characters")
        if "\x00" in value:
            raise Invalid("text contains NUL")
        if not empty and not value:
            raise Invalid("text is empty")
        return value

    check.__doc__ = f"text (at most {limit} characters)"
    return check


def integer(minimum: int | None = 0, maximum: int | None = None) -> Callable[[Any], int]:
    """An int (not a bool) within the bounds."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {type(value).__name__}")
        if minimum is not None and value < minimum:
            raise Invalid(f"integer below {minimum}")
        if maximum is not None and value > maximum:
            raise Invalid(f"integer above {maximum}")
        return value

    check.__doc__ = "integer" if minimum is None else f"integer >= {minimum}"
    return check


def number(value: Any) -> float:
    """A finite int or float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise Invalid("number is not finite")
    return float(value)


def boolean(value: Any) -> bool:
    """True or false."""
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {type(value).__name__}")
    return value


def timestamp(value: Any) -> datetime:
    """A timezone-aware datetime."""
    if not isinstance(value, datetime):
        raise Invalid(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise Invalid("datetime has no timezone")
    return value


def duration(value: Any) -> timedelta:
    """A timedelta of zero or more."""
    if not isinstance(value, timedelta):
        raise Invalid(f"expected a duration, got {type(value).__name__}")
    if value < timedelta(0):
        raise Invalid("negative duration")
    return value


_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def sha256(value: Any) -> str:
    """A lower-case hex SHA-256 digest."""
    if not isinstance(value, str) or not _SHA256.match(value):
        raise Invalid("expected a 64-character lower-case hex SHA-256")
    return value


def nullable(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """*check*, or None."""

    def inner(value: Any) -> Any:
        return None if value is None else check(value)

    inner.__doc__ = f"{_describe_validator(check)} or null"
    return inner


def one_of(*choices: str) -> Callable[[Any], str]:
    """One of the given strings."""

    def check(value: Any) -> str:
        if value not in choices:
            raise Invalid(f"expected one of {', '.join(choices)}")
        return value

    check.__doc__ = "one of " + ", ".join(repr(c) for c in choices)
    return check


def list_of(item: Any, limit: int = 10_000) -> Callable[[Any], list[Any]]:
    """A list of at most *limit* items, each checked by *item*."""
    item_schema = Schema(item)

    def check(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise Invalid(f"expected a list, got {type(value).__name__}")
        if len(value) > limit:
            raise Invalid(f"list longer than {limit}")
        return [item_schema(v) for v in value]

    check.__doc__ = f"list of {_describe_validator(item)}"
    return check


def mapping_of(key: Any, value: Any, limit: int = 10_000) -> Callable[[Any], dict[Any, Any]]:
    """A dict of at most *limit* entries with checked keys and values."""
    key_schema, value_schema = Schema(key), Schema(value)

    def check(obj: Any) -> dict[Any, Any]:
        if not isinstance(obj, Mapping):
            raise Invalid(f"expected a mapping, got {type(obj).__name__}")
        if len(obj) > limit:
            raise Invalid(f"mapping larger than {limit}")
        return {key_schema(k): value_schema(v) for k, v in obj.items()}

    check.__doc__ = f"mapping of {_describe_validator(key)} to {_describe_validator(value)}"
    return check


def column(check: Callable[[Any], Any], limit: int = 100_000) -> Callable[[Any], list[Any]]:
    """A list checked item by item with a cheap callable (for large batches)."""

    def inner(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise Invalid(f"expected a list, got {type(value).__name__}")
        if len(value) > limit:
            raise Invalid(f"column longer than {limit}")
        for item in value:
            check(item)
        return value

    inner.__doc__ = f"column of {_describe_validator(check)}"
    return inner


class _Record:
    """Checks a dict field by field.

    voluptuous' own dict schemas walk every key through a general matcher;
    messages are checked on both sides of every hop, so this does the same job
    with set arithmetic and one call per field, and keeps voluptuous' error
    paths.
    """

    def __init__(self, fields: Mapping[str, Any], optional: Mapping[str, Any]) -> None:
        self.fields = {k: _callable(v) for k, v in fields.items()}
        self.optional = {k: _callable(v) for k, v in optional.items()}
        self.required = frozenset(fields)
        self.allowed = frozenset(fields) | frozenset(optional)
        self.doc = fields, optional

    def __call__(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise Invalid(f"expected a mapping, got {type(value).__name__}")
        keys = value.keys()
        missing = self.required - keys
        if missing:
            name = min(missing)
            raise Invalid("missing field", path=[name])
        extra = keys - self.allowed
        if extra:
            raise Invalid("unexpected field", path=[min(map(str, extra))])
        out = {}
        for key, item in value.items():
            check = self.fields.get(key) or self.optional[key]
            try:
                out[key] = check(item)
            except Invalid as exc:
                raise Invalid(exc.error_message, path=[key, *exc.path]) from None
        return out


def _callable(check: Any) -> Callable[[Any], Any]:
    if isinstance(check, Schema):
        return check.schema if callable(check.schema) else check
    return check


def record(fields: Mapping[str, Any], *, optional: Mapping[str, Any] | None = None) -> Schema:
    """A dict with exactly these fields (and optionally some more, named)."""
    return Schema(_Record(fields, optional or {}))


def _describe_validator(check: Any) -> str:
    if isinstance(check, (Schema, _Record)):
        return "record"
    if isinstance(check, type):
        return check.__name__
    doc = getattr(check, "__doc__", None)
    if doc:
        return doc.strip().splitlines()[0].rstrip(".")
    return getattr(check, "__name__", repr(check))


# -- shared records ------------------------------------------------------------

name_text = text(NAME_LIMIT, empty=False)
reason_text = text(REASON_LIMIT)

#: Resource figures a host reports (builders and the master alike).
HOST_STATS = record(
    {
        "timestamp": timestamp,
        "disk_total": integer(),
        "disk_free": integer(),
        "mem_total": integer(),
        "mem_free": integer(),
        "swap_total": integer(),
        "swap_free": integer(),
        "load_average": number,
        "cpu_temp": nullable(number),
    }
)

#: What a builder says about one wheel it built (the master checks it all).
FILE_RECORD = record(
    {
        "filename": text(FILENAME_LIMIT, empty=False),
        "size": integer(),
        "sha256": sha256,
        "requires_python": nullable(text(1000)),
        "requires_dist": list_of(text(2000), limit=1000),
        "metadata_sha256": nullable(sha256),
        "apt_dependencies": list_of(name_text, limit=1000),
        "missing_libraries": list_of(name_text, limit=1000),
        "import_ok": nullable(boolean),
        "import_error": nullable(text(10_000)),
    }
)

FAILURE_CLASSES = (
    "compile_error",
    "timeout",
    "memory",
    "disk_full",
    "dependency_missing",
    "builder_lost",
    "invalid_wheel",
    "import_failed",
    "aborted",
    "other",
)

BUILDER_STATES = ("idle", "building", "sending", "sleeping", "paused", "gone")

BUILD_SUMMARY = record(
    {
        "build_id": integer(1),
        "package": name_text,
        "version": name_text,
        "abi": name_text,
        "builder": name_text,
        "status": one_of("success", "failed"),
        "duration": duration,
        "failure_class": nullable(one_of(*FAILURE_CLASSES)),
        "finished_at": timestamp,
    }
)

BUILDER_STATE = record(
    {
        "builder_id": integer(1),
        "label": name_text,
        "abi": name_text,
        "platform": name_text,
        "os_name": text(),
        "os_version": text(),
        "state": one_of(*BUILDER_STATES),
        "paused": boolean,
        "build": nullable(
            record(
                {
                    "build_id": integer(1),
                    "package": name_text,
                    "version": name_text,
                    "started_at": timestamp,
                    "timeout": duration,
                }
            )
        ),
        "first_seen": timestamp,
        "last_seen": timestamp,
        "stats": nullable(HOST_STATS),
    }
)

MASTER_STATS = record(
    {
        "timestamp": timestamp,
        "host": HOST_STATS,
        "paused": boolean,
        "queue": mapping_of(name_text, integer(), limit=100),
        "builds_last_hour": mapping_of(name_text, integer(), limit=100),
        "packages_built": integer(),
        "files_count": integer(),
        "downloads_last_hour": integer(),
        "downloads_30d": integer(),
        "downloads_all": integer(),
        "time_saved": duration,
        "upstream_serial": nullable(integer()),
        "upstream_lag": nullable(integer()),
        "ingest_rate": number,
    }
)


MASTER_INFO = record(
    {
        "hostname": text(),
        "version": text(),
        "started_at": timestamp,
        "paused": boolean,
        "os_name": text(),
        "os_version": text(),
    }
)


# -- protocols -------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """The messages one socket carries, from the binding side's point of view."""

    name: str
    doc: str
    recv: Mapping[str, Schema | None] = field(default_factory=dict)
    send: Mapping[str, Schema | None] = field(default_factory=dict)
    docs: Mapping[str, str] = field(default_factory=dict)
    peer: bool = False

    def __reversed__(self) -> Protocol:
        return Protocol(self.name, self.doc, self.send, self.recv, self.docs, peer=not self.peer)

    def __iter__(self) -> Iterator[str]:
        yield from sorted(set(self.recv) | set(self.send))


def _protocol(
    name: str,
    doc: str,
    recv: Mapping[str, tuple[Schema | None, str]],
    send: Mapping[str, tuple[Schema | None, str]],
) -> Protocol:
    docs = {f"recv:{k}": v[1] for k, v in recv.items()}
    docs.update({f"send:{k}": v[1] for k, v in send.items()})
    return Protocol(
        name,
        doc,
        {k: v[0] for k, v in recv.items()},
        {k: v[0] for k, v in send.items()},
        docs,
    )


#: Task control: the master (PUSH) to each task (PULL).
task_control = _protocol(
    "task_control",
    "The master steers each of its tasks.",
    recv={
        "PAUSE": (None, "stop doing periodic and pausable work"),
        "RESUME": (None, "carry on after PAUSE"),
        "QUIT": (None, "close sockets and end the thread"),
    },
    send={},
)

#: Builders (DEALER) talk to the master's build dispatcher (ROUTER).
builder = _protocol(
    "builder",
    "Builders ask the master for work and report results. Every request gets one reply.",
    recv={
        "HELLO": (
            record(
                {
                    "protocol": integer(0),
                    "label": name_text,
                    "python_version": text(20, empty=False),
                    "abi": name_text,
                    "platform": name_text,
                    "os_name": text(),
                    "os_version": text(),
                    "machine": text(),
                    "cpu_count": integer(1),
                    "board": nullable(text()),
                    "build_timeout": duration,
                    "sandbox": text(),
                    "stats": HOST_STATS,
                },
                # A builder that restarts while holding a finished build says so,
                # so the master can collect it instead of building it again.
                optional={"resume_build_id": nullable(integer(1))},
            ),
            "first message; the master answers ACK or REFUSED",
        ),
        "IDLE": (record({"stats": HOST_STATS}), "ready for work; answered BUILD or SLEEP"),
        "BUSY": (
            record({"build_id": integer(1), "stats": HOST_STATS}),
            "still building; answered CONT or ABORT",
        ),
        "BUILT": (
            record(
                {
                    "build_id": integer(1),
                    "status": boolean,
                    "duration": duration,
                    "failure_class": nullable(one_of(*FAILURE_CLASSES)),
                    "log": text(LOG_LIMIT),
                    "files": list_of(FILE_RECORD, limit=100),
                    "environment": mapping_of(name_text, text(1000), limit=100),
                }
            ),
            "the build ended; answered SEND (a file is wanted) or DONE",
        ),
        "SENT": (
            record({"build_id": integer(1), "filename": text(FILENAME_LIMIT)}),
            "the file asked for has been transferred; answered SEND or DONE",
        ),
        "BYE": (record({"reason": reason_text}), "the builder is going away; no answer"),
    },
    send={
        "ACK": (
            record(
                {
                    "builder_id": integer(1),
                    "index_url": text(2000),
                    "extra_index_urls": list_of(text(2000), limit=10),
                    "build_timeout": duration,
                    "heartbeat": duration,
                }
            ),
            "welcome; the builder's id and where to fetch sources from",
        ),
        "REFUSED": (record({"reason": reason_text}), "HELLO refused (protocol, ABI, ...)"),
        "SLEEP": (
            record(
                {"seconds": number, "reason": one_of("paused", "no work", "asleep", "low disk")}
            ),
            "nothing to do now; ask again later",
        ),
        "BUILD": (
            record(
                {
                    "build_id": integer(1),
                    "package": name_text,
                    "version": name_text,
                    "timeout": duration,
                }
            ),
            "build this",
        ),
        "CONT": (None, "carry on"),
        "ABORT": (record({"build_id": integer(1), "reason": reason_text}), "stop this build"),
        "SEND": (
            record(
                {
                    "build_id": integer(1),
                    "filename": text(FILENAME_LIMIT),
                    "transfer": text(64, empty=False),
                }
            ),
            "send this file over the file socket, naming the transfer token",
        ),
        "DONE": (record({"build_id": integer(1)}), "the build is recorded; forget it"),
        "DIE": (record({"reason": reason_text}), "stop the builder process"),
    },
)


def chunk_data(limit: int) -> Callable[[Any], bytes | memoryview]:
    """Bytes of at most *limit* length, or a flat byte view of them (a chunk received in
    place: see :func:`piwheels.transport.decode_view`)."""

    def check(value: Any) -> bytes | memoryview:
        if isinstance(value, memoryview):
            if value.ndim != 1 or value.itemsize != 1 or not value.c_contiguous:
                raise Invalid("expected bytes, got a shaped buffer")
        elif not isinstance(value, bytes):
            raise Invalid(f"expected bytes, got {type(value).__name__}")
        if len(value) > limit:
            raise Invalid(f"more than {limit} bytes")
        return value

    check.__doc__ = f"bytes (at most {limit})"
    return check


#: File transfer: a sender (DEALER) is pulled chunk by chunk by the master (ROUTER).
files = _protocol(
    "files",
    "Chunked, credit-based file transfer. The master asks for ranges; the sender answers "
    "each FETCH with one CHUNK. A sender that hears nothing for a while says HELLO again "
    "and the master resumes with whatever is still missing.",
    recv={
        "HELLO": (record({"transfer": text(64, empty=False)}), "start or resume a transfer"),
        "CHUNK": (
            record({"offset": integer(), "data": chunk_data(1024 * 1024)}),
            "the bytes of one range",
        ),
    },
    send={
        "FETCH": (
            record({"offset": integer(), "length": integer(1, 1024 * 1024)}),
            "send this range",
        ),
        "DONE": (record({"sha256": sha256, "size": integer()}), "everything arrived"),
        "ERROR": (record({"reason": reason_text}), "the transfer is refused or unknown"),
    },
)

#: Live status for monitors: the master (PUB) to monitors (SUB).
status = _protocol(
    "status",
    "What the master publishes for monitors. A monitor that connects asks the control "
    "socket for HELLO to get the recent history first.",
    recv={},
    send={
        "MASTER": (MASTER_INFO, "the master's identity and state"),
        "STATS": (MASTER_STATS, "periodic figures"),
        "BUILDER": (BUILDER_STATE, "a builder's state changed"),
        "BUILD": (BUILD_SUMMARY, "a build finished"),
        "GONE": (
            record({"builder_id": integer(1), "reason": reason_text}),
            "a builder went away or was dropped",
        ),
    },
)

#: Control: monitors (DEALER) steer the master (ROUTER).
control = _protocol(
    "control",
    "Monitors steer the master. Builder actions take a builder id, or null for all.",
    recv={
        "HELLO": (None, "answered HISTORY"),
        "PAUSE": (None, "stop handing out builds"),
        "RESUME": (None, "hand out builds again"),
        "QUIT": (None, "stop the master"),
        "SLEEP": (record({"builder_id": nullable(integer(1))}), "stop giving this builder work"),
        "WAKE": (record({"builder_id": nullable(integer(1))}), "give this builder work again"),
        "SKIP": (record({"builder_id": nullable(integer(1))}), "abandon the current build"),
        "KILL": (record({"builder_id": nullable(integer(1))}), "tell the builder to exit"),
    },
    send={
        "OK": (None, "done"),
        "ERROR": (record({"reason": reason_text}), "refused"),
        "HISTORY": (
            record(
                {
                    "master": MASTER_INFO,
                    "stats": list_of(MASTER_STATS, limit=10_000),
                    "builders": list_of(BUILDER_STATE, limit=10_000),
                    "builds": list_of(BUILD_SUMMARY, limit=10_000),
                }
            ),
            "recent history for a new monitor",
        ),
    },
)

_pkg = {"package": name_text}
_ver = {"package": name_text, "version": name_text}

#: Admin tools (DEALER) ask the master's admin gateway (ROUTER).
admin = _protocol(
    "admin",
    "Requests from piw-add, piw-remove, piw-rebuild and piw-import. Each request gets "
    "zero or more PROGRESS messages and then OK or ERROR.",
    recv={
        "ADD_PACKAGE": (
            record(
                _pkg,
                optional={
                    "summary": nullable(text(1000)),
                    "aliases": list_of(name_text, limit=100),
                },
            ),
            "add a package (idempotent)",
        ),
        "ADD_VERSION": (
            record(
                _ver,
                optional={"released": nullable(timestamp), "requires_python": nullable(text(1000))},
            ),
            "add a version (idempotent)",
        ),
        "SKIP": (
            record(
                {
                    **_pkg,
                    "version": nullable(name_text),
                    "abi": nullable(name_text),
                    "reason": text(REASON_LIMIT, empty=False),
                }
            ),
            "never build this package, version or ABI",
        ),
        "UNSKIP": (
            record({**_pkg, "version": nullable(name_text), "abi": nullable(name_text)}),
            "undo SKIP",
        ),
        "YANK": (record({**_ver, "reason": reason_text}), "mark a version yanked"),
        "UNYANK": (record(_ver), "undo YANK"),
        "ALIAS": (record({**_pkg, "alias": name_text}), "record another spelling"),
        "PRIORITY": (record({**_pkg, "priority": integer(None)}), "move up or down the queue"),
        "REBUILD_REQUEST": (
            record({**_pkg, "version": nullable(name_text), "abi": nullable(name_text)}),
            "allow failed builds to be tried again",
        ),
        "REMOVE": (
            record(
                {
                    **_pkg,
                    "version": nullable(name_text),
                    "builds_only": boolean,
                    "reason": reason_text,
                }
            ),
            "remove a package, a version, or only their builds (files and pages go too)",
        ),
        "REBUILD": (
            record(
                {
                    "part": one_of("home", "search", "root", "project", "all", "stats"),
                    "package": nullable(name_text),
                }
            ),
            "rewrite pages",
        ),
        "IMPORT": (
            record(
                {
                    **_ver,
                    "abi": name_text,
                    "duration": duration,
                    "log": text(LOG_LIMIT),
                    "files": list_of(FILE_RECORD, limit=100),
                }
            ),
            "import wheels built elsewhere; answered SEND per file, then OK",
        ),
        "SENT": (record({"filename": text(FILENAME_LIMIT)}), "an imported file was sent"),
    },
    send={
        "PROGRESS": (
            record({"done": integer(), "total": integer(), "message": text(1000)}),
            "how far a long request has got",
        ),
        "SEND": (
            record({"filename": text(FILENAME_LIMIT), "transfer": text(64, empty=False)}),
            "send this file over the file socket",
        ),
        "OK": (
            record({"code": name_text, "message": text(10_000)}),
            "done; code says what happened (e.g. NEWPKG, UNCHANGED)",
        ),
        "ERROR": (
            record({"code": name_text, "message": text(10_000)}),
            "refused; code says why (e.g. NOPKG, NOVER, INVALID)",
        ),
    },
)

#: Hit tables a log batch carries rows for, with the columns of each row (COPY order).
_HIT_BASE = ("accessed_at", "client", "kind", "bytes_sent")
_CLIENT_COLUMNS = (
    "distro_name", "distro_version", "os_name", "os_version", "arch", "py_name",
    "py_version", "installer_name", "installer_version", "setuptools_version",
)  # fmt: skip
LOG_TABLES: dict[str, tuple[str, ...]] = {
    "downloads": (*_HIT_BASE, "package", "filename", *_CLIENT_COLUMNS),
    "searches": (*_HIT_BASE, "package", *_CLIENT_COLUMNS),
    "project_hits": (*_HIT_BASE, "package"),
    "json_hits": (*_HIT_BASE, "package"),
    "web_hits": (*_HIT_BASE, "page"),
}
#: Client kinds a hit row may carry.
LOG_CLIENT_KINDS = ("pip", "uv", "direct", "bot", "other")
#: Sources of the bandwidth-only totals of a batch (requests no hit table keeps).
LOG_EXTRA_SOURCES = ("metadata", "index_root", "other")
#: Largest table payload of one batch, in bytes.
LOG_TABLE_LIMIT = 64 * 1024 * 1024

# One row of PostgreSQL's COPY text format, per table.  A whole payload is
# checked by one regular expression match (C speed, once per batch) instead
# of value by value: UTC times, a client that is a salted hash or a network
# prefix (never a raw address), a known kind, a byte count, then escaped text
# (no raw tab, newline, CR or NUL; backslash only in escapes), NULL (\N)
# only where the column allows it.
_TS = (
    rb"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])[T ](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d"
    rb"(?:\.\d{1,6})?\+00(?::00)?"
)
_CLIENT = rb"(?:[0-9a-f]{16,128}|[0-9A-Fa-f.:]{2,39}/\d{1,3})?"
_KIND = b"(?:" + b"|".join(k.encode() for k in LOG_CLIENT_KINDS) + b")"
_CHARS = rb"[^\t\n\r\\\x00]"
# Possessive repeats (*+): a cell ends where its characters end, so nothing is ever
# given back; they spare the engine its backtracking bookkeeping (a third faster).
_TEXT = _CHARS + rb"*+(?:\\[\\tnr]" + _CHARS + rb"*+)*+"
_REQUIRED = rb"(?:" + _CHARS + rb"|\\[\\tnr])" + _TEXT
_OPTIONAL = rb"(?:\\N|" + _TEXT + rb")"


def _row_pattern(columns: tuple[str, ...]) -> re.Pattern[bytes]:
    parts = [_TS, _CLIENT, _KIND, rb"\d{1,15}"]
    for name in columns[4:]:
        parts.append(_REQUIRED if name in ("package", "filename", "page") else _OPTIONAL)
    return re.compile(b"(?:" + b"\t".join(parts) + b"\n)*+")


_ROW_PATTERNS = {table: _row_pattern(cols) for table, cols in LOG_TABLES.items()}


def _copy_rows(table: str) -> Callable[[Any], bytes]:
    pattern = _ROW_PATTERNS[table]

    def check(value: Any) -> bytes:
        if not isinstance(value, bytes):
            raise Invalid(f"expected bytes, got {type(value).__name__}")
        if len(value) > LOG_TABLE_LIMIT:
            raise Invalid(f"more than {LOG_TABLE_LIMIT} bytes")
        m = pattern.match(value)
        assert m is not None  # the pattern matches the empty string
        if m.end() != len(value):
            line = value.count(b"\n", 0, m.end()) + 1
            raise Invalid(f"row {line} is not a valid {table} row")
        return value

    check.__doc__ = f"{table} rows in COPY text format ({', '.join(LOG_TABLES[table])})"
    return check


_DAY = re.compile(r"\d{4}-\d\d-\d\d\Z")


def _extra_row(value: Any) -> list[Any]:
    """[UTC day (YYYY-MM-DD), source, client kind, requests, bytes sent]."""
    if not isinstance(value, list) or len(value) != 5:
        raise Invalid("expected [day, source, kind, requests, bytes]")
    day, source, kind, hits, nbytes = value
    if not isinstance(day, str) or not _DAY.match(day):
        raise Invalid("expected a day as YYYY-MM-DD")
    if source not in LOG_EXTRA_SOURCES:
        raise Invalid(f"unknown bandwidth source {str(source)[:20]!r}")
    if kind not in LOG_CLIENT_KINDS:
        raise Invalid(f"unknown client kind {str(kind)[:20]!r}")
    integer(1)(hits)
    integer()(nbytes)
    return value


def _log_tables(value: Any) -> dict[str, bytes]:
    """Rows per hit table, each table's rows as one COPY text payload."""
    if not isinstance(value, Mapping):
        raise Invalid("expected a mapping of hit tables")
    unknown = sorted(str(k)[:30] for k in set(value) - set(LOG_TABLES))
    if unknown:
        raise Invalid(f"unknown hit tables {unknown}")
    return {table: _copy_rows(table)(rows) for table, rows in value.items()}


# The rollup aggregates a batch may carry (``BatchEncoder.take``): what its rows add to
# each rollup, tallied by the logger's parser workers so the master sums a few hundred
# aggregate rows instead of walking every row.  Names and client descriptions are the
# rows' COPY text cells, as they are in the rows.
#: Rollup source of each hit table (``hourly_totals.source`` and the like).
LOG_SOURCES = {
    "downloads": "download",
    "searches": "search",
    "project_hits": "project",
    "json_hits": "json",
    "web_hits": "web",
}
_TABLE_OF_SOURCE = {v: k for k, v in LOG_SOURCES.items()}
# The aggregates travel as the rows do: one text per part, one aggregate per line
# ("\t" between values, requests and bytes first), checked by one match (C speed);
# CBOR lists of small values cost more to encode, decode and check than the tally
# they spare the master.  The check returns them parsed: (requests, bytes, values...)
# with the text values as bytes (names and client cells as in the rows).
_HOUR_S = rb"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3])"
_DAY_S = rb"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
# Cells as in the rows (_REQUIRED, _OPTIONAL: fast possessive repeats, no group per byte).
_CELL_S = _REQUIRED
_OPT_S = _OPTIONAL
_KIND_S = _KIND
_ROLLUP_PARTS = {
    # part: (tab splits of a line, pattern of the values after requests and bytes)
    "hours": (4, rb"(?:download|search|project|json|web)\t" + _HOUR_S + rb"\t" + _KIND_S),
    "names": (
        5,
        rb"(?:download\t" + _DAY_S + rb"\t" + _KIND_S + rb"\t" + _CELL_S + rb"\t"
        + _CELL_S + rb"|(?:search|project|json|web)\t" + _DAY_S + rb"\t" + _KIND_S
        + rb"\t" + _CELL_S + rb")",
    ),
    "clients": (
        5,
        rb"(?:download|search)\t" + _DAY_S + rb"\t" + _KIND_S + rb"\t" + _OPT_S
        + rb"(?:\t" + _OPT_S + rb"){9}",
    ),
}  # fmt: skip
_ROLLUP_RES = {
    part: re.compile(rb"(?:[1-9]\d{0,14}\t\d{1,15}\t" + p + rb"\n)*+")
    for part, (_, p) in _ROLLUP_PARTS.items()
}
_ROLLUP_KEYS = frozenset(_ROLLUP_PARTS)


# Parsed aggregates by text: the master's check parses them, and its store reads the
# same parse (parse_rollup); the check itself returns the text as it came, so that a
# checked batch is sent as it was made.
_PARSED: dict[tuple[str, bytes], list[tuple[Any, ...]]] = {}
_PARSED_LIMIT = 48  # three parts of a group of GROUP_BATCHES (16) batches


def _parse_part(part: str, text: bytes) -> list[tuple[Any, ...]]:
    key = (part, text)
    rows = _PARSED.get(key)
    if rows is not None:
        return rows
    m = _ROLLUP_RES[part].match(text)
    assert m is not None  # the pattern matches the empty string
    if m.end() != len(text):
        line = text.count(b"\n", 0, m.end()) + 1
        raise Invalid(f"{part}: aggregate {line} is malformed")
    lines = text.split(b"\n")
    lines.pop()
    rows = []
    if lines:
        splits = _ROLLUP_PARTS[part][0]
        cols = list(zip(*[line.split(b"\t", splits) for line in lines], strict=True))
        rows = list(zip(map(int, cols[0]), map(int, cols[1]), *cols[2:], strict=True))
    if len(_PARSED) >= _PARSED_LIMIT:
        del _PARSED[next(iter(_PARSED))]
    _PARSED[key] = rows
    return rows


def parse_rollup(rollup: Mapping[str, bytes]) -> dict[str, list[tuple[Any, ...]]]:
    """A checked BATCH ``rollup``, parsed: per part, (requests, bytes, text values...) with
    the text values as bytes (names and client cells as in the rows)."""
    return {part: _parse_part(part, rollup[part]) for part in _ROLLUP_PARTS}


def _log_rollup(value: Any) -> dict[str, bytes]:
    """Aggregates as text, a line each: hours "requests bytes source hour kind"; names
    "requests bytes source day kind name-cell(s)"; clients "requests bytes source day
    kind 10-client-cells" """
    if not isinstance(value, Mapping) or value.keys() != _ROLLUP_KEYS:
        raise Invalid(f"expected a mapping of {sorted(_ROLLUP_KEYS)}")
    for part in _ROLLUP_PARTS:
        text = value[part]
        if not isinstance(text, bytes) or len(text) > LOG_TABLE_LIMIT:
            raise Invalid(f"{part}: expected at most {LOG_TABLE_LIMIT} bytes")
        _parse_part(part, text)
    return dict(value)


_SOURCE_BYTES = {table: source.encode() for table, source in LOG_SOURCES.items()}


def _log_batch_sums(batch: dict[str, Any]) -> dict[str, Any]:
    """The rollup aggregates, if any, cover exactly the batch's rows.

    Per hit table, the hours, the names and (downloads, searches) the
    client descriptions each add up, per day and client kind, to the same
    requests and bytes, and their requests to the table's row count.
    """
    rollup = batch.get("rollup")
    if rollup is None:
        return batch
    totals: dict[tuple[bytes, str], dict[tuple[bytes, bytes], list[int]]] = {}
    for part, rows in parse_rollup(rollup).items():
        for row in rows:
            hits, nbytes, source, day, kind = row[:5]
            sums = totals.get((source, part))
            if sums is None:
                sums = totals[(source, part)] = {}
            key = (day[:10], kind)
            tot = sums.get(key)
            if tot is None:
                sums[key] = [hits, nbytes]
            else:
                tot[0] += hits
                tot[1] += nbytes
    tables = batch["tables"]
    for table, source in _SOURCE_BYTES.items():
        rows = tables.get(table, b"").count(b"\n")
        hours = totals.get((source, "hours"), {})
        parts = ("names", "clients") if table in ("downloads", "searches") else ("names",)
        if sum(v[0] for v in hours.values()) != rows or any(
            totals.get((source, p), {}) != hours for p in parts
        ):
            raise Invalid(f"the rollup aggregates of {table} do not add up to its {rows} rows")
    return batch


class _BatchRecord(_Record):
    """A BATCH: its fields, then its rollup aggregates checked against its rows."""

    def __call__(self, value: Any) -> dict[str, Any]:
        return _log_batch_sums(super().__call__(value))


_log_batch = Schema(
    _BatchRecord(
        {
            "batch_id": integer(1),
            "records": integer(),
            "tables": _log_tables,
            "extra": column(_extra_row, 10_000),
        },
        {"rollup": _log_rollup},
    )
)


#: piw-logger (DEALER) sends batches to the master's log ingest (ROUTER).
logger = _protocol(
    "logger",
    "Batches of access-log records. A batch is acknowledged only once stored; the "
    "logger keeps and resends what is not acknowledged.",
    recv={
        "BATCH": (
            _log_batch,
            "records (how many lines it holds), hit rows per table as COPY text, "
            "bandwidth-only totals per day, source and client kind, and optionally the "
            "rollup aggregates of the rows (checked to add up to them)",
        ),
    },
    send={
        "ACK": (record({"batch_id": integer(1), "stored": integer()}), "stored"),
        "NACK": (
            record({"batch_id": integer(1), "reason": reason_text, "retry_after": number}),
            "not stored; send it again later",
        ),
    },
)

#: Internal: anything that changes pages (PUSH) to the page writer (PULL).
pages = _protocol(
    "pages",
    "Requests to rewrite or delete pages. Requests for the same page within a short "
    "window are merged.",
    recv={
        "PROJECT": (record(_pkg), "rewrite a project's index and project pages"),
        "DELETE_PACKAGE": (record(_pkg), "remove a project's pages and files"),
        "DELETE_VERSION": (record(_ver), "remove a version's files and rewrite the pages"),
        "LOG": (record({"build_id": integer(1), "log": text(LOG_LIMIT)}), "write a build log"),
        "HOME": (None, "rewrite the home page"),
        "SEARCH": (None, "rewrite the search index"),
        "ROOT": (None, "rewrite the root simple index"),
        "ALL": (
            record({"rewrite": integer(1), "reply_to": nullable(text(200, empty=False))}),
            "rewrite everything, in the background; progress and the outcome go to reply_to "
            "(a rewrite_progress address) tagged with the rewrite number",
        ),
    },
    send={},
)

_rewrite = {"rewrite": integer(1)}

#: Internal: the page writer (PUSH) reports a full rewrite to whoever asked (PULL).
rewrite_progress = _protocol(
    "rewrite_progress",
    "How far a full rewrite of the site has got, sent to the address given in the pages "
    "protocol's ALL.",
    recv={
        "PROGRESS": (
            record({**_rewrite, "done": integer(), "total": integer(), "message": text(1000)}),
            "projects written so far",
        ),
        "DONE": (
            record(
                {
                    **_rewrite,
                    "code": one_of("REBUILT", "BUSY", "FAILED"),
                    "written": integer(),
                    "message": text(10_000),
                }
            ),
            "the rewrite ended: REBUILT, or refused (BUSY: one is already running) or FAILED, "
            "with the reason",
        ),
    },
    send={},
)

_target = {"builder_id": nullable(integer(1))}

#: Internal: the status hub (PUSH) passes builder actions to the build dispatcher (PULL).
builder_control = _protocol(
    "builder_control",
    "Actions on one builder (by id) or on all of them (null), from monitors.",
    recv={
        "SLEEP": (record(_target), "no new builds for the builder until WAKE"),
        "WAKE": (record(_target), "undo SLEEP"),
        "SKIP": (record(_target), "abandon the builder's current build"),
        "KILL": (record(_target), "abandon the current build and tell the builder to exit"),
    },
    send={},
)

#: Internal: tasks (PUSH) feed the status hub (PULL), which publishes to monitors.
status_feed = Protocol(
    "status_feed",
    "Tasks report what monitors should see; the status hub keeps history and publishes it.",
    recv=status.send,
    send={},
    docs={f"recv:{k}": v for k, v in ((k[5:], v) for k, v in status.docs.items())},
)

#: What the file receiver found in a checked wheel: everything its database record needs.
WHEEL_FACTS = record(
    {
        "filename": text(FILENAME_LIMIT, empty=False),
        "path": text(1000, empty=False),
        "package": name_text,
        "version": name_text,
        "size": integer(),
        "sha256": sha256,
        "metadata_sha256": sha256,
        "requires_python": nullable(text(1000)),
        "requires_dist": list_of(text(2000), limit=1000),
        "tags": list_of(name_text, limit=1000),
        "python_tag": name_text,
        "abi_tag": name_text,
        "platform_tag": name_text,
        "modules": list_of(name_text, limit=10_000),
    }
)

TRANSFER_REFUSALS = (
    "invalid",
    "invalid_name",
    "wrong_package",
    "wrong_version",
    "wrong_abi",
    "too_large",
    "short",
    "invalid_wheel",
    "hash_mismatch",
    "conflict",
    "incomplete",
    "unknown",
    "disk",
)

_transfer = {"transfer": text(64, empty=False)}

#: Internal: the build dispatcher and admin gateway (DEALER) drive the file receiver (ROUTER).
transfers = _protocol(
    "transfers",
    "The master's build dispatcher and admin gateway tell the file receiver which file to "
    "expect under a transfer token, then ask it to verify and publish what arrived. Every "
    "request is answered, and every answer names the transfer.",
    recv={
        "EXPECT": (
            record(
                {
                    **_transfer,
                    "filename": text(FILENAME_LIMIT),
                    "package": name_text,
                    "version": name_text,
                    "abi": nullable(name_text),
                    "platform": nullable(name_text),
                    "size": integer(),
                    "sha256": sha256,
                }
            ),
            "get ready to receive this file (the sender's claims are checked later); "
            "answered EXPECTING or REFUSED",
        ),
        "VERIFY": (
            record(_transfer),
            "check the received file (size, sha256 against the claim, the wheel itself); "
            "answered VERIFIED or REFUSED",
        ),
        "PUBLISH": (
            record(_transfer),
            "verify if not yet done, then rename the file into the index with its .metadata; "
            "answered PUBLISHED or REFUSED",
        ),
        "CANCEL": (
            record(_transfer),
            "forget the transfer and remove its file; answered CANCELLED",
        ),
    },
    send={
        "EXPECTING": (record(_transfer), "ready; tell the sender to send under this token"),
        "VERIFIED": (record({**_transfer, "file": WHEEL_FACTS}), "the file is the wheel expected"),
        "PUBLISHED": (
            record({**_transfer, "file": WHEEL_FACTS, "existed": boolean}),
            "the file is in the index (existed: the same file was already there)",
        ),
        "CANCELLED": (record(_transfer), "the transfer is gone"),
        "REFUSED": (
            record(
                {
                    **_transfer,
                    "code": one_of(*TRANSFER_REFUSALS),
                    "reason": reason_text,
                    "final": boolean,
                }
            ),
            "refused, with the reason; final: the transfer and its file are gone "
            "(otherwise, e.g. incomplete, it may still be sent again)",
        ),
    },
)

#: Every protocol, for the docs and for the tests.
ALL: tuple[Protocol, ...] = (
    task_control,
    builder,
    files,
    status,
    control,
    admin,
    logger,
    pages,
    rewrite_progress,
    builder_control,
    status_feed,
    transfers,
)


def schema_for(protocol: Protocol, msg: str, *, sending: bool) -> Schema | None:
    """The schema of *msg* in *protocol*; KeyError when it is not allowed."""
    table = protocol.send if sending else protocol.recv
    return table[msg]


def describe() -> str:
    """The protocol reference as reStructuredText (for docs/protocol.rst)."""
    out = [
        "Protocol reference",
        "==================",
        "",
        ".. This page is generated from piwheels/protocols.py; do not edit by hand.",
        "",
        f"Protocol version: **{PROTOCOL_VERSION}**. Messages are CBOR arrays "
        "``[name, payload]``; the payload is a map with the named fields below "
        "(``null`` when the message carries nothing). Datetimes carry a timezone; "
        "durations travel as CBOR tag 2001.",
        "",
    ]
    for proto in ALL:
        out += [proto.name, "-" * len(proto.name), "", proto.doc, ""]
        for direction, table in (
            ("received by the binder", proto.recv),
            ("sent by the binder", proto.send),
        ):
            if not table:
                continue
            out += [f"Messages {direction}:", ""]
            key = "recv" if table is proto.recv else "send"
            for msg, schema in table.items():
                out.append(f"``{msg}``")
                out.append(f"   {proto.docs.get(f'{key}:{msg}', '')}")
                out.append("")
                out += [f"   {line}" for line in _describe_schema(schema)]
                out.append("")
    return "\n".join(out) + "\n"


def _describe_schema(schema: Schema | None, indent: str = "") -> list[str]:
    if schema is None:
        return [f"{indent}(no payload)"]
    if not isinstance(schema.schema, _Record):
        return [f"{indent}{_describe_validator(schema.schema)}"]
    fields, optional = schema.schema.doc
    lines = [f"{indent}- ``{key}``: {_describe_validator(check)}" for key, check in fields.items()]
    lines += [
        f"{indent}- ``{key}`` (optional): {_describe_validator(check)}"
        for key, check in optional.items()
    ]
    return lines


__all__ = [
    "ALL",
    "ALLOW_EXTRA",
    "PROTOCOL_VERSION",
    "Protocol",
    "describe",
    "schema_for",
]
