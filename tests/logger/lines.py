"""Log lines and user agents for the access-log tests, built like nginx writes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

SECRET = b"test-secret-0123456789abcdef"

# A pip UA exactly as pip 23.2.1 sends it from a Raspberry Pi (Raspbian bullseye).
PIP_UA = "pip/23.2.1 " + json.dumps(
    {
        "ci": None,
        "cpu": "armv7l",
        "distro": {
            "id": "bullseye",
            "libc": {"lib": "glibc", "version": "2.31"},
            "name": "Raspbian GNU/Linux",
            "version": "11",
        },
        "implementation": {"name": "CPython", "version": "3.9.2"},
        "installer": {"name": "pip", "version": "23.2.1"},
        "openssl_version": "OpenSSL 1.1.1w  11 Sep 2023",
        "python": "3.9.2",
        "rustc_version": None,
        "setuptools_version": "52.0.0",
        "system": {"name": "Linux", "release": "6.1.21-v7l+"},
    },
    separators=(",", ":"),
    sort_keys=True,
)
# A uv UA as uv 0.13.8 sends it (key order and nulls as uv writes them).
UV_UA = (
    'uv/0.13.8 {"installer":{"name":"uv","version":"0.13.8","subcommand":["pip","install"]},'
    '"python":"3.11.2","implementation":{"name":"CPython","version":"3.11.2"},'
    '"distro":{"name":"Debian GNU/Linux","version":"12","id":"bookworm",'
    '"libc":{"lib":"glibc","version":"2.36"}},"system":{"name":"Linux",'
    '"release":"6.6.51+rpt-rpi-v8"},"cpu":"aarch64","openssl_version":null,'
    '"setuptools_version":null,"rustc_version":null,"ci":null}'
)
BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux armv7l) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.example.com/bot.html)"


def _esc_nginx(s: str) -> str:
    return "".join(
        f"\\x{b:02X}" if b in (0x22, 0x5C) or b < 0x20 or b >= 0x7F else chr(b)
        for b in s.encode("utf-8")
    )


def _esc_apache(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def json_line(
    uri: str,
    *,
    ua: str = PIP_UA,
    method: str = "GET",
    status: int = 200,
    nbytes: int = 1234,
    addr: str = "192.0.2.10",
    time: str = "2021-10-01T12:00:00+00:00",
) -> str:
    """A line in the project's nginx format (escape=json)."""
    esc = lambda s: json.dumps(s, ensure_ascii=False)[1:-1]  # noqa: E731
    body = max(0, nbytes - 300)
    return (
        f'{{"time":"{time}","addr":"{addr}","method":"{esc(method)}","uri":"{esc(uri)}",'
        f'"proto":"HTTP/1.1","status":{status},"bytes":{nbytes},"body_bytes":{body},'
        f'"referer":"","ua":"{esc(ua)}","accept":"*/*","rt":0.004,"host":"piwheels.test"}}'
    )


def combined_line(
    uri: str,
    *,
    ua: str = PIP_UA,
    method: str = "GET",
    status: int = 200,
    nbytes: int | str = 1234,
    addr: str = "192.0.2.10",
    time: str = "01/Oct/2021:12:00:00 +0000",
    apache: bool = False,
) -> str:
    """A combined-format line, escaped as nginx (\\x22) or Apache (\\") escapes it."""
    esc = _esc_apache if apache else _esc_nginx
    return f'{addr} - - [{time}] "{method} {esc(uri)} HTTP/1.1" {status} {nbytes} "-" "{esc(ua)}"'


WHEN = datetime(2021, 10, 1, 12, 0, tzinfo=UTC)
