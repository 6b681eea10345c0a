"""Every message of every protocol: valid shapes pass, invalid shapes are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from piwheels import protocols
from piwheels.errors import ProtocolError
from piwheels.transport import _check, decode, encode

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SHA = "a" * 64

STATS = {
    "timestamp": NOW,
    "disk_total": 10_000,
    "disk_free": 5_000,
    "mem_total": 4_000,
    "mem_free": 1_000,
    "swap_total": 0,
    "swap_free": 0,
    "load_average": 0.5,
    "cpu_temp": None,
}
FILE = {
    "filename": "foo-1.0-cp311-cp311-linux_armv7l.whl",
    "size": 1234,
    "sha256": SHA,
    "requires_python": ">=3.9",
    "requires_dist": ['bar>=1; python_version < "3.12"'],
    "metadata_sha256": SHA,
    "apt_dependencies": ["zlib1g"],
    "missing_libraries": [],
    "import_ok": True,
    "import_error": None,
}
BUILDER = {
    "builder_id": 1,
    "label": "pi4",
    "abi": "cp311",
    "platform": "linux_armv7l",
    "os_name": "Debian",
    "os_version": "12",
    "state": "building",
    "paused": False,
    "build": {
        "build_id": 3,
        "package": "foo",
        "version": "1.0",
        "started_at": NOW,
        "timeout": timedelta(hours=3),
    },
    "first_seen": NOW,
    "last_seen": NOW,
    "stats": STATS,
}
SUMMARY = {
    "build_id": 3,
    "package": "foo",
    "version": "1.0",
    "abi": "cp311",
    "builder": "pi4",
    "status": "success",
    "duration": timedelta(seconds=30),
    "failure_class": None,
    "finished_at": NOW,
}
MASTER_INFO = {
    "hostname": "master",
    "version": "0.1",
    "started_at": NOW,
    "paused": False,
    "os_name": "Debian",
    "os_version": "12",
}
MASTER_STATS = {
    "timestamp": NOW,
    "host": STATS,
    "paused": False,
    "queue": {"cp311": 4},
    "builds_last_hour": {"cp311": 2},
    "packages_built": 1,
    "files_count": 2,
    "downloads_last_hour": 3,
    "downloads_30d": 4,
    "downloads_all": 5,
    "time_saved": timedelta(days=1),
    "upstream_serial": 10,
    "upstream_lag": 0,
    "ingest_rate": 1.5,
}
LOG_ROW = b"2021-10-01T12:00:00+00\t0123456789abcdef\tpip\t1000\tfoo\n"
LOG_BATCH_ONE = {
    "records": 3,
    "tables": {
        "downloads": b"2021-10-01T12:00:00.5+00\t10.1.2.0/24\tuv\t1000\tfoo\t"
        b"foo-1.0-py3-none-any.whl\tDebian GNU/Linux\t12\tLinux\t\\N\tarmv7l\tCPython\t"
        b"3.11.2\tuv\t0.4.1\t\\N\n",
        "json_hits": LOG_ROW,
    },
    "extra": [["2021-10-01", "metadata", "pip", 1, 500]],
}

WHEEL_FACTS = {
    "filename": FILE["filename"],
    "path": "simple/foo/" + FILE["filename"],
    "package": "foo",
    "version": "1.0",
    "size": 1234,
    "sha256": SHA,
    "metadata_sha256": SHA,
    "requires_python": None,
    "requires_dist": ["bar>=1"],
    "tags": ["cp311-cp311-linux_armv7l"],
    "python_tag": "cp311",
    "abi_tag": "cp311",
    "platform_tag": "linux_armv7l",
    "modules": ["foo"],
}

#: One valid payload for every message of every protocol.
VALID: dict[tuple[str, str], Any] = {
    ("task_control", "PAUSE"): None,
    ("task_control", "RESUME"): None,
    ("task_control", "QUIT"): None,
    ("builder", "HELLO"): {
        "protocol": protocols.PROTOCOL_VERSION,
        "label": "pi4",
        "python_version": "3.11.2",
        "abi": "cp311",
        "platform": "linux_armv7l",
        "os_name": "Debian GNU/Linux",
        "os_version": "12",
        "machine": "armv7l",
        "cpu_count": 4,
        "board": None,
        "build_timeout": timedelta(hours=3),
        "sandbox": "bubblewrap",
        "stats": STATS,
    },
    ("builder", "IDLE"): {"stats": STATS},
    ("builder", "BUSY"): {"build_id": 1, "stats": STATS},
    ("builder", "BUILT"): {
        "build_id": 1,
        "status": True,
        "duration": timedelta(seconds=12.5),
        "failure_class": None,
        "log": "built\n",
        "files": [FILE],
        "environment": {"pip": "23.0.1"},
    },
    ("builder", "SENT"): {"build_id": 1, "filename": FILE["filename"]},
    ("builder", "BYE"): {"reason": "SIGTERM"},
    ("builder", "ACK"): {
        "builder_id": 1,
        "index_url": "http://127.0.0.1:8080/simple/",
        "extra_index_urls": [],
        "build_timeout": timedelta(hours=1),
        "heartbeat": timedelta(seconds=5),
    },
    ("builder", "REFUSED"): {"reason": "protocol 0 is not 1"},
    ("builder", "SLEEP"): {"seconds": 5.0, "reason": "no work"},
    ("builder", "BUILD"): {
        "build_id": 1,
        "package": "foo",
        "version": "1.0",
        "timeout": timedelta(hours=1),
    },
    ("builder", "CONT"): None,
    ("builder", "ABORT"): {"build_id": 1, "reason": "skipped by operator"},
    ("builder", "SEND"): {"build_id": 1, "filename": FILE["filename"], "transfer": "t1"},
    ("builder", "DONE"): {"build_id": 1},
    ("builder", "DIE"): {"reason": "killed"},
    ("files", "HELLO"): {"transfer": "t1"},
    ("files", "CHUNK"): {"offset": 0, "data": b"\x00" * 100},
    ("files", "FETCH"): {"offset": 0, "length": 65536},
    ("files", "DONE"): {"sha256": SHA, "size": 100},
    ("files", "ERROR"): {"reason": "unknown transfer"},
    ("status", "MASTER"): MASTER_INFO,
    ("status", "STATS"): MASTER_STATS,
    ("status", "BUILDER"): BUILDER,
    ("status", "BUILD"): SUMMARY,
    ("status", "GONE"): {"builder_id": 1, "reason": "silent for 300s"},
    ("control", "HELLO"): None,
    ("control", "PAUSE"): None,
    ("control", "RESUME"): None,
    ("control", "QUIT"): None,
    ("control", "SLEEP"): {"builder_id": 1},
    ("control", "WAKE"): {"builder_id": None},
    ("control", "SKIP"): {"builder_id": 2},
    ("control", "KILL"): {"builder_id": None},
    ("control", "OK"): None,
    ("control", "ERROR"): {"reason": "no such builder"},
    ("control", "HISTORY"): {
        "master": MASTER_INFO,
        "stats": [MASTER_STATS],
        "builders": [BUILDER],
        "builds": [SUMMARY],
    },
    ("admin", "ADD_PACKAGE"): {"package": "foo", "summary": "A foo", "aliases": ["Foo"]},
    ("admin", "ADD_VERSION"): {"package": "foo", "version": "1.0", "released": NOW},
    ("admin", "SKIP"): {"package": "foo", "version": None, "abi": "cp39", "reason": "broken"},
    ("admin", "UNSKIP"): {"package": "foo", "version": "1.0", "abi": None},
    ("admin", "YANK"): {"package": "foo", "version": "1.0", "reason": "bad"},
    ("admin", "UNYANK"): {"package": "foo", "version": "1.0"},
    ("admin", "ALIAS"): {"package": "foo", "alias": "Foo_"},
    ("admin", "PRIORITY"): {"package": "foo", "priority": -3},
    ("admin", "REBUILD_REQUEST"): {"package": "foo", "version": None, "abi": None},
    ("admin", "REMOVE"): {"package": "foo", "version": None, "builds_only": True, "reason": ""},
    ("admin", "REBUILD"): {"part": "project", "package": "foo"},
    ("admin", "IMPORT"): {
        "package": "foo",
        "version": "1.0",
        "abi": "cp311",
        "duration": timedelta(0),
        "log": "imported",
        "files": [FILE],
    },
    ("admin", "SENT"): {"filename": FILE["filename"]},
    ("admin", "PROGRESS"): {"done": 1, "total": 10, "message": "pages"},
    ("admin", "SEND"): {"filename": FILE["filename"], "transfer": "t2"},
    ("admin", "OK"): {"code": "NEWPKG", "message": "added foo"},
    ("admin", "ERROR"): {"code": "NOPKG", "message": "no package foo"},
    ("logger", "BATCH"): {"batch_id": 1, **LOG_BATCH_ONE},
    ("logger", "ACK"): {"batch_id": 1, "stored": 1},
    ("logger", "NACK"): {"batch_id": 1, "reason": "database down", "retry_after": 5.0},
    ("pages", "PROJECT"): {"package": "foo"},
    ("pages", "DELETE_PACKAGE"): {"package": "foo"},
    ("pages", "DELETE_VERSION"): {"package": "foo", "version": "1.0"},
    ("pages", "LOG"): {"build_id": 1, "log": "log text"},
    ("pages", "HOME"): None,
    ("pages", "SEARCH"): None,
    ("pages", "ROOT"): None,
    ("pages", "ALL"): {"rewrite": 1, "reply_to": "inproc://rewrite-progress-1"},
    ("rewrite_progress", "PROGRESS"): {"rewrite": 1, "done": 5, "total": 10, "message": "pages"},
    ("rewrite_progress", "DONE"): {
        "rewrite": 1,
        "code": "REBUILT",
        "written": 10,
        "message": "done",
    },
    ("builder_control", "SLEEP"): {"builder_id": 1},
    ("builder_control", "WAKE"): {"builder_id": None},
    ("builder_control", "SKIP"): {"builder_id": 2},
    ("builder_control", "KILL"): {"builder_id": None},
    ("status_feed", "MASTER"): MASTER_INFO,
    ("status_feed", "STATS"): MASTER_STATS,
    ("status_feed", "BUILDER"): BUILDER,
    ("status_feed", "BUILD"): SUMMARY,
    ("status_feed", "GONE"): {"builder_id": 1, "reason": "silent for 300s"},
    ("transfers", "EXPECT"): {
        "transfer": "t3",
        "filename": FILE["filename"],
        "package": "foo",
        "version": "1.0",
        "abi": "cp311",
        "platform": None,
        "size": 1234,
        "sha256": SHA,
    },
    ("transfers", "VERIFY"): {"transfer": "t3"},
    ("transfers", "PUBLISH"): {"transfer": "t3"},
    ("transfers", "CANCEL"): {"transfer": "t3"},
    ("transfers", "EXPECTING"): {"transfer": "t3"},
    ("transfers", "VERIFIED"): {"transfer": "t3", "file": WHEEL_FACTS},
    ("transfers", "PUBLISHED"): {"transfer": "t3", "file": WHEEL_FACTS, "existed": False},
    ("transfers", "CANCELLED"): {"transfer": "t3"},
    ("transfers", "REFUSED"): {
        "transfer": "t3",
        "code": "hash_mismatch",
        "reason": "sha256 differs from the builder's claim",
        "final": True,
    },
}


def _all_messages() -> list[tuple[protocols.Protocol, str, bool]]:
    out = []
    for proto in protocols.ALL:
        out += [(proto, msg, False) for msg in proto.recv]
        out += [(proto, msg, True) for msg in proto.send]
    return out


def test_every_message_has_a_valid_example() -> None:
    declared = {(p.name, m) for p, m, _ in _all_messages()}
    assert declared == set(VALID)


@pytest.mark.parametrize(
    ("proto", "msg", "sending"),
    _all_messages(),
    ids=lambda v: v.name if isinstance(v, protocols.Protocol) else str(v),
)
def test_valid_message_round_trips(proto: protocols.Protocol, msg: str, sending: bool) -> None:
    data = VALID[proto.name, msg]
    checked = _check(proto, msg, data, sending=sending)
    name, decoded = decode(encode(msg, checked))
    assert name == msg
    assert _check(proto, msg, decoded, sending=sending) == data
    # The peer sees the same message from the other direction.
    assert _check(reversed(proto), msg, decoded, sending=not sending) == data


def _mutations(data: Any) -> list[tuple[str, Any]]:
    """Invalid variants of a valid payload: missing field, extra field, wrong types."""
    if data is None:
        return [("payload where none is allowed", {"x": 1})]
    out: list[tuple[str, Any]] = [("no payload", None), ("not a map", ["x"])]
    first = next(iter(data))
    out.append((f"missing {first}", {k: v for k, v in data.items() if k != first}))
    out.append(("unexpected field", {**data, "unexpected": 1}))
    for key, value in data.items():
        bad = object()
        if value is None:
            bad = ["x"]
        elif isinstance(value, bool):
            bad = "text"
        elif isinstance(value, (int, float)):
            bad = "12"
        elif isinstance(value, str):
            bad = 12
        elif isinstance(value, (list, dict, datetime, timedelta, bytes)):
            bad = "text"
        out.append((f"{key} of the wrong type", {**data, key: bad}))
    return out


@pytest.mark.parametrize(
    ("proto", "msg", "sending"),
    _all_messages(),
    ids=lambda v: v.name if isinstance(v, protocols.Protocol) else str(v),
)
def test_invalid_shapes_are_refused(proto: protocols.Protocol, msg: str, sending: bool) -> None:
    data = VALID[proto.name, msg]
    for what, bad in _mutations(data):
        with pytest.raises(ProtocolError) as info:
            _check(proto, msg, bad, sending=sending)
        assert msg in str(info.value), what


def test_unknown_and_misdirected_messages() -> None:
    with pytest.raises(ProtocolError, match="not allowed on the builder socket"):
        _check(protocols.builder, "NOPE", None, sending=False)
    # BUILD is sent by the master, so the master must not accept one.
    with pytest.raises(ProtocolError, match="BUILD is not allowed"):
        _check(protocols.builder, "BUILD", VALID["builder", "BUILD"], sending=False)
    # A control message arriving on the builder socket.
    with pytest.raises(ProtocolError, match="not allowed"):
        _check(protocols.builder, "PAUSE", None, sending=False)


def test_nested_errors_name_the_field() -> None:
    bad = {**VALID["builder", "HELLO"], "stats": {**STATS, "disk_free": -1}}
    with pytest.raises(ProtocolError, match=r"stats\.disk_free: integer below 0"):
        _check(protocols.builder, "HELLO", bad, sending=False)


def test_datetimes_and_durations_round_trip() -> None:
    odd = timezone(timedelta(hours=5, minutes=30))
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=odd)
    span = timedelta(days=3, seconds=7, microseconds=11)
    name, data = decode(encode("X", {"when": when, "span": span, "neg": -span}))
    assert name == "X"
    assert data["when"] == when and data["when"].utcoffset() == odd.utcoffset(None)
    assert data["span"] == span and data["neg"] == -span


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode("X", {"when": datetime(2026, 1, 1)})
    with pytest.raises(ProtocolError, match="no timezone"):
        _check(
            protocols.status,
            "MASTER",
            {**MASTER_INFO, "started_at": datetime(2026, 1, 1)},
            sending=True,
        )


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xff\xff",
        b"\x9f",
        b"\xa1\x01",
        b"\x83\x01\x02\x03",
        b"\x82\x01\x02",
        b"\xd9\x07\xd1\x01",
    ],
    ids=[
        "empty",
        "garbage",
        "unterminated",
        "truncated-map",
        "three-items",
        "int-name",
        "bad-duration-tag",
    ],
)
def test_malformed_cbor_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(payload)


def test_duration_tag_must_be_well_formed() -> None:
    import cbor2

    raw = cbor2.dumps(["X", cbor2.CBORTag(2001, ["a", 1, 2])])
    with pytest.raises(ProtocolError, match="malformed"):
        decode(raw)
    raw = cbor2.dumps(["X", cbor2.CBORTag(9999, 1)])
    with pytest.raises(ProtocolError, match="malformed CBOR"):
        decode(raw)


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"nope": LOG_ROW}, "unknown hit tables"),
        ({"json_hits": "text, not bytes"}, "expected bytes"),
        ({"json_hits": LOG_ROW.replace(b"0123456789abcdef", b"192.0.2.1")}, "row 1 is not"),
        ({"json_hits": LOG_ROW + LOG_ROW.replace(b"pip", b"robot")}, "row 2 is not"),
        ({"json_hits": LOG_ROW.replace(b"12:00", b"25:00")}, "not a valid json_hits row"),
        ({"json_hits": LOG_ROW.replace(b"+00", b"")}, "not a valid"),  # no time zone
        ({"json_hits": LOG_ROW.replace(b"\tfoo", b"\t\\N")}, "not a valid"),  # NULL package
        ({"json_hits": LOG_ROW.replace(b"foo", b"f\\x")}, "not a valid"),  # bad escape
        ({"json_hits": LOG_ROW.replace(b"foo", b"f\roo")}, "not a valid"),  # raw CR
        ({"json_hits": LOG_ROW.replace(b"1000", b"-1")}, "not a valid"),
        ({"json_hits": LOG_ROW[:-1]}, "not a valid"),  # unterminated row
        ({"web_hits": LOG_ROW.replace(b"\tfoo", b"\tfoo\textra")}, "not a valid"),
    ],
)
def test_log_batch_rows_are_checked(tables: dict[str, Any], message: str) -> None:
    payload = {"batch_id": 1, "records": 1, "tables": tables, "extra": []}
    with pytest.raises(ProtocolError, match=message):
        _check(protocols.logger, "BATCH", payload, sending=False)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["2021-10-01", "metadata", "pip", 1], "expected \\[day"),
        (["01/10/2021", "metadata", "pip", 1, 5], "YYYY-MM-DD"),
        (["2021-10-01", "downloads", "pip", 1, 5], "unknown bandwidth source"),
        (["2021-10-01", "other", "crawler", 1, 5], "unknown client kind"),
        (["2021-10-01", "other", "bot", 0, 5], "integer below 1"),
    ],
)
def test_log_batch_extra_is_checked(extra: list[Any], message: str) -> None:
    payload = {"batch_id": 1, "records": 1, "tables": {}, "extra": [extra]}
    with pytest.raises(ProtocolError, match=message):
        _check(protocols.logger, "BATCH", payload, sending=False)


def test_log_batch_rows_escapes_and_nulls() -> None:
    row = LOG_ROW.replace(b"foo", b"f\\\\o\\to\\no")  # escaped backslash, tab, newline
    payload = {"batch_id": 2, "records": 1, "tables": {"json_hits": row * 2}, "extra": []}
    assert _check(protocols.logger, "BATCH", payload, sending=False)["tables"] == {
        "json_hits": row * 2
    }


def test_describe_lists_every_message() -> None:
    text = protocols.describe()
    for proto, msg, _ in _all_messages():
        assert f"``{msg}``" in text
        assert proto.name in text


def _rolled_batch() -> dict[str, Any]:
    """LOG_BATCH_ONE with its rollup aggregates, as the logger's encoder makes them."""
    desc = b"Debian GNU/Linux\t12\tLinux\t\\N\tarmv7l\tCPython\t3.11.2\tuv\t0.4.1\t\\N"
    return {
        "batch_id": 1,
        **LOG_BATCH_ONE,
        "rollup": {
            "hours": b"1\t1000\tdownload\t2021-10-01T12\tuv\n1\t1000\tjson\t2021-10-01T12\tpip\n",
            "names": b"1\t1000\tdownload\t2021-10-01\tuv\tfoo\tfoo-1.0-py3-none-any.whl\n"
            b"1\t1000\tjson\t2021-10-01\tpip\tfoo\n",
            "clients": b"1\t1000\tdownload\t2021-10-01\tuv\t" + desc + b"\n",
        },
    }


def test_log_batch_rollup_that_adds_up_is_accepted() -> None:
    payload = _rolled_batch()
    got = _check(protocols.logger, "BATCH", payload, sending=False)
    assert got["rollup"] == payload["rollup"]  # as it came (it is stored as sent)
    assert protocols.parse_rollup(got["rollup"])["names"][0] == (
        1, 1000, b"download", b"2021-10-01", b"uv", b"foo\tfoo-1.0-py3-none-any.whl"
    )  # fmt: skip


def _mutate(part: str, old: bytes, new: bytes) -> dict[str, Any]:
    payload = _rolled_batch()
    assert old in payload["rollup"][part]
    payload["rollup"][part] = payload["rollup"][part].replace(old, new, 1)
    return payload


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({**_rolled_batch(), "rollup": {"hours": b""}}, "expected a mapping of"),
        ({**_rolled_batch(), "rollup": {"hours": [], "names": b"", "clients": b""}}, "bytes"),
        (_mutate("hours", b"T12", b" 12"), "hours: aggregate 1 is malformed"),
        (_mutate("hours", b"json", b"downloads"), "hours: aggregate 2 is malformed"),
        (_mutate("hours", b"uv", b"robot"), "hours: aggregate 1 is malformed"),
        (_mutate("hours", b"1\t1000", b"0\t1000"), "hours: aggregate 1 is malformed"),
        (_mutate("hours", b"1\t1000", b"1\t-5"), "hours: aggregate 1 is malformed"),
        (_mutate("hours", b"pip\n", b"pip"), "hours: aggregate 2 is malformed"),
        (_mutate("names", b"\tfoo\tfoo-1.0", b"\tfoo-1.0"), "names: aggregate 1"),  # no file
        (_mutate("names", b"\tfoo\n", b"\tf\too\n"), "names: aggregate 2"),  # raw tab
        (_mutate("names", b"\tfoo\n", b"\tf\\xo\n"), "names: aggregate 2"),  # bad escape
        (_mutate("names", b"2021-10-01\tpip", b"2021-02-30x\tpip"), "names: aggregate 2"),
        (_mutate("clients", b"\tLinux", b""), "clients: aggregate 1 is malformed"),
        (_mutate("clients", b"download", b"json"), "clients: aggregate 1 is malformed"),
        (
            _mutate("names", b"1\t1000\tdownload", b"2\t1000\tdownload"),
            "of downloads do not add up",
        ),
        (_mutate("clients", b"1\t1000", b"1\t999"), "of downloads do not add up to its 1 rows"),
        (_mutate("hours", b"json\t2021-10-01", b"json\t2021-10-02"), "of json_hits do not add"),
        (_mutate("names", b"2021-10-01\tpip", b"2021-10-01\tuv"), "of json_hits do not add up"),
        (_mutate("hours", b"json", b"web"), "of json_hits do not add up"),
    ],
)
def test_log_batch_rollup_is_checked(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        _check(protocols.logger, "BATCH", payload, sending=False)
    assert "\n" not in str(info.value)
