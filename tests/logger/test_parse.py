"""Parsing the project's nginx JSON lines and the combined format, and rejecting garbage."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from piwheels.errors import PiwheelsError
from piwheels.logger.parse import (
    MAX_LINE,
    LogParser,
    MalformedLine,
    parse_line,
    unescape_log_field,
)
from tests.logger.lines import PIP_UA, UV_UA, WHEN, combined_line, json_line

WHEEL = "/simple/numpy/numpy-1.21.4-cp39-cp39-linux_armv7l.whl"


def test_json_line_fast_path() -> None:
    p = parse_line(json_line(WHEEL, nbytes=14_000_123, addr="2001:db8::7"))
    assert p.time == WHEN
    assert p.time.tzinfo is UTC
    assert (p.addr, p.method, p.uri, p.status, p.bytes_sent) == (
        "2001:db8::7",
        "GET",
        WHEEL,
        200,
        14_000_123,
    )
    # The UA comes back unescaped: exactly what pip sent.
    assert p.ua == PIP_UA


def test_json_line_with_offset_becomes_utc() -> None:
    p = parse_line(json_line("/", time="2021-10-01T14:00:00+02:00"))
    assert p.time == WHEN


def test_json_line_escapes_in_uri_and_ua() -> None:
    ua = 'weird "agent" \\ with\ttab and ünïcode'
    p = parse_line(json_line('/simple/a"b/', ua=ua))
    assert p.uri == '/simple/a"b/'
    assert p.ua == ua


def test_json_line_other_key_order_uses_general_path() -> None:
    obj = {
        "status": 304,
        "uri": "/simple/pip/",
        "method": "GET",
        "time": "2021-10-01T12:00:00+00:00",
        "ua": UV_UA,
        "addr": "192.0.2.1",
        "bytes": 180,
    }
    p = parse_line(json.dumps(obj))
    assert (p.status, p.uri, p.ua, p.bytes_sent, p.time) == (304, "/simple/pip/", UV_UA, 180, WHEN)


def test_json_line_with_request_field() -> None:
    # The shape of a simpler log format: "req" holds the request line.
    line = json.dumps(
        {
            "time": "2021-10-01T12:00:00+00:00",
            "req": "GET /simple/x/ HTTP/1.1",
            "status": 200,
            "bytes_sent": 797,
            "ua": "pip/23.2.1",
        }
    )
    p = parse_line(line)
    assert (p.method, p.uri, p.bytes_sent) == ("GET", "/simple/x/", 797)


def test_combined_nginx_escapes() -> None:
    p = parse_line(combined_line(WHEEL, time="01/Oct/2021:05:00:00 -0700"))
    assert p.time == WHEN
    assert p.ua == PIP_UA  # \x22 undone
    assert (p.method, p.uri, p.status, p.bytes_sent) == ("GET", WHEEL, 200, 1234)


def test_combined_apache_escapes() -> None:
    ua = 'agent "quoted" back\\slash'
    p = parse_line(combined_line("/", ua=ua, apache=True))
    assert p.ua == ua


def test_combined_utf8_bytes_escaped_by_nginx() -> None:
    p = parse_line(combined_line("/", ua="Zürich-agent"))
    assert p.ua == "Zürich-agent"


def test_combined_dash_bytes_and_trailing_fields() -> None:
    line = combined_line("/simple/", nbytes="-") + ' "piwheels.test" 0.004'
    p = parse_line(line)
    assert p.bytes_sent == 0
    assert p.uri == "/simple/"


def test_common_format_without_agent() -> None:
    p = parse_line('192.0.2.1 - frank [01/Oct/2021:12:00:00 +0000] "GET / HTTP/1.0" 200 2326')
    assert (p.uri, p.ua, p.time) == ("/", "", WHEN)


def test_garbage_request_line_is_parsed_not_malformed() -> None:
    # A TLS handshake on the HTTP port: nginx logs it with status 400.
    line = '192.0.2.1 - - [01/Oct/2021:12:00:00 +0000] "\\x16\\x03\\x01\\x02" 400 150 "-" "-"'
    p = parse_line(line)
    assert (p.method, p.status) == ("", 400)


def test_unescape_log_field() -> None:
    assert unescape_log_field("a\\x22b") == 'a"b'
    assert unescape_log_field('a\\"b\\\\c\\n') == 'a"b\\c\n'
    assert unescape_log_field("plain") == "plain"
    assert unescape_log_field("\\xC3\\xBC") == "ü"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("x" * (MAX_LINE + 1), "too-long"),
        ('{"time":"2021-10-01T12:00:00+00:00","uri":', "json"),
        ("[1, 2, 3]", "format"),
        ('"just a string"', "format"),
        ("{" + "[" * 5000 + "]" * 5000 + "}", "json"),
        ("[" * 100000, "too-long"),
        ('{"time": 1}', "fields"),
        ('{"time":"2021-10-01T12:00:00+00:00","uri":"/","method":"GET"}', "fields"),
        ('{"time":"2021-10-01T12:00:00+00:00","method":"GET","uri":"/","status":"x"}', "fields"),
        ('{"time":"2021-10-01T12:00:00+00:00","method":"GET","uri":"/","status":true}', "fields"),
        ('{"time":"2021-10-01T12:00:00+00:00","status":200}', "fields"),
        ('{"time":"yesterday","method":"GET","uri":"/","status":200}', "time"),
        ('{"time":"2021-10-01T12:00:00","method":"GET","uri":"/","status":200}', "time"),
        (json_line("/").replace('"status":200', '"status":2x0'), "fields"),
        (json_line("/").replace("2021-10-01T12", "2021-13-01T12"), "time"),
        (combined_line("/", time="01/Foo/2021:12:00:00 +0000"), "time"),
        (combined_line("/", time="01/Oct/2021:12:00:00 0000"), "time"),
        (combined_line("/", time="1/Oct/2021:12:00:00 +0000"), "time"),
        ("192.0.2.1 - - [01/Oct/2021:12:00:00 +0000] GET / 200 5", "format"),
        ("\x16\x03\x01\x00\xa5\x01\x00\x00", "format"),
        ("\x00" * 10, "format"),
    ],
)
def test_malformed_lines(line: str, reason: str) -> None:
    with pytest.raises(MalformedLine) as info:
        LogParser().parse(line)
    assert info.value.reason == reason
    assert isinstance(info.value, PiwheelsError)
    # One line, naming what was wrong.
    assert "\n" not in str(info.value)
    assert reason in str(info.value)


def test_time_cache_does_not_leak_between_lines() -> None:
    p = LogParser()
    a = p.parse(json_line("/", time="2021-10-01T12:00:00+00:00"))
    b = p.parse(json_line("/", time="2021-10-01T12:00:01+00:00"))
    c = p.parse(combined_line("/", time="01/Oct/2021:12:00:02 +0000"))
    d = p.parse(combined_line("/", time="01/Oct/2021:12:00:02 +0100"))
    assert [x.time.second for x in (a, b, c)] == [0, 1, 2]
    assert d.time == datetime(2021, 10, 1, 11, 0, 2, tzinfo=UTC)


def test_ua_cache_keeps_distinct_agents_apart() -> None:
    p = LogParser()
    assert p.parse(json_line("/", ua=PIP_UA)).ua == PIP_UA
    assert p.parse(json_line("/", ua=UV_UA)).ua == UV_UA
    assert p.parse(json_line("/", ua=PIP_UA)).ua == PIP_UA
