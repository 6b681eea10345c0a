"""Synthetic nginx access logs with known ground truth.

The generator decides what every line is (a pip download of numpy on
Raspbian bullseye armv7l, a bot, a 304, garbage...) and tallies those
intentions as it writes; :func:`tally_records` tallies what the logger's
parser and classifier make of the same log.  The two must be equal: that is
the check the logger and report tests build on.

Deterministic from the seed.  As a script::

    python tests/synthetic_logs.py --days 90 --lines-per-day 10000 --seed 1 -o out.log

writes ``out.log`` and the ground truth beside it (``out.log.truth.json``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

# Dimensions tallied for installer requests (download and index kinds).
DIMS = (
    "distro_name",
    "distro_version",
    "os_name",
    "arch",
    "py_version",
    "installer_name",
    "installer_version",
    "setuptools_version",
)
PLATFORM_KINDS = ("download", "index")
PACKAGE_KINDS = ("download", "metadata", "index", "project", "json")

# (weight, distro name, version, id, glibc, python, {arch: weight}, pip versions,
#  setuptools, kernel)
PROFILES: list[tuple[Any, ...]] = [
    (26, "Raspbian GNU/Linux", "10", "buster", "2.28", "3.7.3", {"armv7l": 8, "armv6l": 2},
     ["18.1", "23.2.1"], "40.8.0", "5.10.103-v7l+"),
    (8, "Raspbian GNU/Linux", "10", "buster", "2.28", "2.7.16", {"armv7l": 8, "armv6l": 2},
     ["18.1"], "40.8.0", "5.10.103-v7+"),
    (24, "Raspbian GNU/Linux", "11", "bullseye", "2.31", "3.9.2", {"armv7l": 9, "armv6l": 1},
     ["20.3.4", "23.2.1"], "52.0.0", "6.1.21-v7l+"),
    (10, "Debian GNU/Linux", "11", "bullseye", "2.31", "3.9.2", {"aarch64": 1},
     ["20.3.4"], "52.0.0", "6.1.21-v8+"),
    (20, "Debian GNU/Linux", "12", "bookworm", "2.36", "3.11.2",
     {"aarch64": 6, "armv7l": 3, "x86_64": 1}, ["23.0.1", "24.2"], "66.1.1", "6.6.51+rpt-rpi-v8"),
    (6, "Ubuntu", "22.04", "jammy", "2.35", "3.10.12", {"aarch64": 2, "x86_64": 1},
     ["22.0.2"], "59.6.0", "5.15.0-1046-raspi"),
    (3, "Ubuntu", "24.04", "noble", "2.39", "3.12.3", {"aarch64": 1},
     ["24.0"], "68.1.2", "6.8.0-1010-raspi"),
]  # fmt: skip
UV_VERSIONS = ["0.4.30", "0.13.8"]

POPULAR = [
    "requests", "setuptools", "charset-normalizer", "pyyaml", "websocket-client", "numpy",
    "jinja2", "wheel", "pycparser", "cffi", "opencv-python", "markupsafe", "cryptography",
    "aiohttp", "multidict", "pillow", "scipy", "pandas", "grpcio", "pyzmq", "protobuf",
    "rpi-gpio", "gpiozero", "pigpio-dht", "paho-mqtt", "psutil", "lxml", "smbus2", "spidev",
    "awscrt",
]  # fmt: skip
SPIKE_PACKAGES = ["flask-login", "markdown", "sentry-sdk", "semantic-version"]
# How some projects' names are spelled in links (canonical form is the truth).
SPELLINGS = {
    "pyyaml": "PyYAML",
    "flask-login": "Flask_Login",
    "markupsafe": "MarkupSafe",
    "zope-component": "zope.component",
    "rpi-gpio": "RPi.GPIO",
    "opencv-python": "opencv_python",
}

BROWSERS = [
    "Mozilla/5.0 (X11; Linux armv7l) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux aarch64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
]
TOOLS = ["curl/7.88.1", "Wget/1.21.3", "python-requests/2.31.0", "Python-urllib/3.11"]
OTHER_INSTALLERS = ["poetry/1.8.3", "pdm/2.19.1", "pipenv/2024.0.1"]
BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.example.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.example.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://example.com/robot/)",
    "Sogou web spider/4.0(+http://www.example.com/docs/help/webmasters.htm#07)",
    "Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.example.com/bot.html)",
    "facebookexternalhit/1.1",
]
SITE_PAGES = ["packages", "faq", "stats", "json"]
HOSTILE = [
    "/simple/../etc/passwd",
    "/simple/numpy/..%2f..%2fetc%2fpasswd",
    "/simple/foo%2fbar/foo-1.0-py3-none-any.whl",
    "/simple/numpy/numpy-1.0-py3-none-any.whl%00.txt",
    "/project/..%5c..%5cwindows/",
    "/simple//numpy/",
    "/simple/numpy/./numpy-1.0-py3-none-any.whl",
    "/simple/" + "a" * 3000 + "/",
    "/project/-bad-/",
    "/simple/numpy/sub/dir/x.whl",
]
# Hours (UTC) weights: quiet at night, busy in the European and American day.
HOUR_WEIGHTS = [
    2, 2, 2, 2, 2, 3, 4, 5, 6, 7, 8, 8, 8, 9, 10, 10, 10, 10, 9, 8, 7, 5, 4, 3,
]  # fmt: skip

# Base mix of line kinds (per 1 line of the day).
MIX = [
    ("download", 0.42),
    ("download-other", 0.01),
    ("download-direct", 0.03),
    ("metadata", 0.06),
    ("index", 0.30),
    ("index_root", 0.01),
    ("project", 0.025),
    ("json", 0.01),
    ("page", 0.02),
    ("bot", 0.02),
    ("noise", 0.06),
    ("garbage", 0.005),
]


def _agent_key(agent: str) -> str:
    return f"download-{agent}"


def _counter_dict(c: Counter[Any]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(c.items(), key=lambda kv: str(kv[0])) if v}


class Tally:
    """Counts of classified requests in the shape of the ground truth."""

    def __init__(self) -> None:
        self.lines = 0
        self.malformed = 0
        self.kinds: Counter[str] = Counter()
        self.downloads_by_agent: Counter[str] = Counter()
        self.per_day: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.downloads_per_hour: Counter[str] = Counter()
        self.packages: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.pages: Counter[str] = Counter()
        self.platforms: dict[str, dict[str, Counter[str]]] = {
            k: {d: Counter() for d in (*DIMS, "pip_version")} for k in PLATFORM_KINDS
        }
        self.bandwidth: Counter[str] = Counter()
        self.bandwidth_by_month: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.clients_per_day: defaultdict[str, set[str]] = defaultdict(set)
        self.package_days: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def add(
        self,
        kind: str,
        agent: str,
        when: datetime,
        package: str | None,
        page: str | None,
        nbytes: int,
        dims: dict[str, Any] | None,
        client: str,
    ) -> None:
        day = when.strftime("%Y-%m-%d")
        self.kinds[kind] += 1
        self.per_day[day][kind] += 1
        self.clients_per_day[day].add(client)
        bw_key = kind
        if kind == "download":
            self.downloads_by_agent[agent] += 1
            self.downloads_per_hour[when.strftime("%Y-%m-%dT%H")] += 1
            bw_key = _agent_key(agent)
            if package is not None:
                self.package_days[package][day] += 1
        self.bandwidth[bw_key] += nbytes
        self.bandwidth_by_month[when.strftime("%Y-%m")][bw_key] += nbytes
        if kind in PACKAGE_KINDS and package is not None:
            self.packages[kind][package] += 1
        if kind == "page" and page is not None:
            self.pages[page] += 1
        if kind in PLATFORM_KINDS and agent in ("pip", "uv") and dims is not None:
            for d in DIMS:
                value = dims.get(d)
                self.platforms[kind][d]["" if value is None else str(value)] += 1
            if agent == "pip":
                # The articles' "pip versions": installer versions of pip alone.
                self.platforms[kind]["pip_version"][str(dims.get("installer_version"))] += 1

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready counts (the ground truth's shape)."""
        return {
            "lines": self.lines,
            "malformed": self.malformed,
            "kinds": _counter_dict(self.kinds),
            "downloads_by_agent": _counter_dict(self.downloads_by_agent),
            "per_day": {d: _counter_dict(c) for d, c in sorted(self.per_day.items())},
            "downloads_per_hour": _counter_dict(self.downloads_per_hour),
            "packages": {k: _counter_dict(c) for k, c in sorted(self.packages.items()) if c},
            "pages": _counter_dict(self.pages),
            "platforms": {
                k: {d: _counter_dict(c) for d, c in dims.items()}
                for k, dims in self.platforms.items()
            },
            "bandwidth": _counter_dict(self.bandwidth),
            "bandwidth_by_month": {
                m: _counter_dict(c) for m, c in sorted(self.bandwidth_by_month.items())
            },
            "clients_per_day": {d: len(s) for d, s in sorted(self.clients_per_day.items())},
        }


def tally_records(records: Iterable[Any], *, lines: int = 0, malformed: int = 0) -> dict[str, Any]:
    """Tally logger records (``AccessRecord``) into the ground truth's shape."""
    from piwheels.logger.classify import agent_of

    t = Tally()
    t.lines = lines
    t.malformed = malformed
    for r in records:
        dims = {d: getattr(r, d) for d in DIMS}
        t.add(r.kind, agent_of(r), r.time, r.package, r.page, r.bytes_sent, dims, r.client)
    return t.as_dict()


def top(counts: dict[str, int], n: int = 10) -> list[tuple[str, int]]:
    """The *n* largest counts, ties broken by name."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


@dataclass
class Machine:
    addr: str
    agent: str  # pip, uv
    ua: str
    dims: dict[str, Any]
    py_tag: str
    arch: str


@dataclass
class Package:
    name: str  # canonical
    spelling: str
    version: str
    size: int  # wheel body bytes
    pure: bool


@dataclass
class SpikeSpec:
    """Named packages jump on named days, for one Python version and installer."""

    packages: list[str] = field(default_factory=lambda: list(SPIKE_PACKAGES))
    days: list[int] = field(default_factory=list)  # day indices from the start
    py_version: str = "2.7.16"
    installer: str = "pip"
    factor: float = 0.6  # extra downloads per day, as a share of the day's lines


def _esc_json(s: str) -> str:
    """What nginx's escape=json does to a value."""
    return json.dumps(s, ensure_ascii=False)[1:-1]


def _esc_nginx(s: str) -> str:
    """What nginx's default escaping does to a value (\\xHH for ", \\ and non-ASCII)."""
    out = []
    for b in s.encode("utf-8"):
        if b in (0x22, 0x5C) or b < 0x20 or b >= 0x7F:
            out.append(f"\\x{b:02X}")
        else:
            out.append(chr(b))
    return "".join(out)


_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class Generator:
    """Writes a synthetic log and tallies its ground truth."""

    def __init__(
        self,
        *,
        days: int = 30,
        lines_per_day: int = 1000,
        seed: int = 1,
        start: date = date(2021, 10, 1),
        packages: int = 300,
        fmt: str = "json",
        utc_offset: int = 0,
        spike: SpikeSpec | None = None,
    ) -> None:
        if fmt not in ("json", "combined", "mixed"):
            raise ValueError(f"format must be json, combined or mixed, not {fmt!r}")
        self.days = days
        self.lines_per_day = lines_per_day
        self.seed = seed
        self.start = start
        self.fmt = fmt
        self.tz = timezone(timedelta(hours=utc_offset))
        self.rng = random.Random(seed)
        self.spike = spike
        self.truth = Tally()
        self._client_n = 0
        self._make_packages(packages)
        self._make_machines(max(60, lines_per_day // 4))

    # -- population ----------------------------------------------------------

    def _make_packages(self, n: int) -> None:
        rng = self.rng
        spiking = self.spike.packages if self.spike else []
        names = list(POPULAR)
        i = 0
        while len(names) < max(n, len(POPULAR) + len(SPIKE_PACKAGES)) - len(SPIKE_PACKAGES):
            names.append(f"synth-pkg{i:04d}")
            i += 1
        names.append("zope-component")
        names += [s for s in spiking if s not in names and s not in SPIKE_PACKAGES]
        # Spike packages sit low in the popularity order: their base is small.
        for j, s in enumerate(SPIKE_PACKAGES):
            names.insert(min(len(names), 60 + 7 * j), s)
        self.packages = [
            Package(
                name=name,
                spelling=SPELLINGS.get(name, name),
                version=f"{rng.randint(0, 5)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}",
                size=int(math.exp(rng.gauss(11.5, 1.5))) + 1000,
                pure=name in SPIKE_PACKAGES or name in spiking or rng.random() < 0.3,
            )
            for name in names
        ]
        self.pkg_weights = [1.0 / (rank + 1) ** 1.1 for rank in range(len(self.packages))]
        self.by_name = {p.name: p for p in self.packages}

    def _new_addr(self) -> str:
        self._client_n += 1
        n = self._client_n
        if self.rng.random() < 0.2:
            return f"2001:db8:{n // 65536:x}:{n % 65536:x}::{self.rng.randint(1, 65535):x}"
        return f"198.{18 + (n >> 16) % 2}.{(n >> 8) & 255}.{n & 255}"

    def _make_machines(self, n: int) -> None:
        rng = self.rng
        weights = [p[0] for p in PROFILES]
        self.machines: list[Machine] = []
        for _ in range(n):
            profile = rng.choices(PROFILES, weights)[0]
            _w, dname, dver, did, libc, py, archs, pips, st, kernel = profile
            arch = rng.choices(list(archs), list(archs.values()))[0]
            py_tuple = tuple(int(x) for x in py.split("."))
            use_uv = py_tuple >= (3, 8) and rng.random() < 0.15
            ci = True if rng.random() < 0.01 else None
            if use_uv:
                inst_v = rng.choice(UV_VERSIONS)
                data: dict[str, Any] = {
                    "installer": {"name": "uv", "version": inst_v,
                                  "subcommand": ["pip", "install"]},
                    "python": py,
                    "implementation": {"name": "CPython", "version": py},
                    "distro": {"name": dname, "version": dver, "id": did,
                               "libc": {"lib": "glibc", "version": libc}},
                    "system": {"name": "Linux", "release": kernel},
                    "cpu": arch,
                    "openssl_version": None,
                    "setuptools_version": None,
                    "rustc_version": None,
                    "ci": ci,
                }  # fmt: skip
                ua = f"uv/{inst_v} " + json.dumps(data, separators=(",", ":"))
                setuptools = None
            else:
                inst_v = rng.choice(pips)
                data = {
                    "ci": ci,
                    "cpu": arch,
                    "distro": {"id": did, "libc": {"lib": "glibc", "version": libc},
                               "name": dname, "version": dver},
                    "implementation": {"name": "CPython", "version": py},
                    "installer": {"name": "pip", "version": inst_v},
                    "openssl_version": "OpenSSL 1.1.1w  11 Sep 2023",
                    "python": py,
                    "setuptools_version": st,
                    "system": {"name": "Linux", "release": kernel},
                }  # fmt: skip
                ua = f"pip/{inst_v} " + json.dumps(data, separators=(",", ":"), sort_keys=True)
                setuptools = st
            major, minor = py.split(".")[:2]
            self.machines.append(
                Machine(
                    addr=self._new_addr(),
                    agent="uv" if use_uv else "pip",
                    ua=ua,
                    dims={
                        "distro_name": dname,
                        "distro_version": dver,
                        "os_name": "Linux",
                        "arch": arch,
                        "py_version": py,
                        "installer_name": "uv" if use_uv else "pip",
                        "installer_version": inst_v,
                        "setuptools_version": setuptools,
                    },
                    py_tag=f"cp{major}{minor}",
                    arch=arch,
                )
            )
        self.others = [self._new_addr() for _ in range(max(20, n // 4))]

    # -- one request ----------------------------------------------------------

    def _wheel(self, pkg: Package, m: Machine | None) -> str:
        dist = pkg.name.replace("-", "_")
        if pkg.pure or m is None:
            return f"{dist}-{pkg.version}-py2.py3-none-any.whl"
        abi = m.py_tag + ("mu" if m.py_tag == "cp27" else "")
        return f"{dist}-{pkg.version}-{m.py_tag}-{abi}-linux_{m.arch}.whl"

    def _package(self) -> Package:
        return self.rng.choices(self.packages, self.pkg_weights)[0]

    def _line(
        self, when: datetime, addr: str, method: str, uri: str, status: int, body: int, ua: str
    ) -> tuple[str, int]:
        """The log line and the byte count the logger will read from it."""
        total = body + 250 + self.rng.randint(0, 150)
        fmt = self.fmt
        if fmt == "mixed":
            fmt = "combined" if self.rng.random() < 0.3 else "json"
        local = when.astimezone(self.tz)
        if fmt == "json":
            line = (
                f'{{"time":"{local.isoformat()}","addr":"{addr}","method":"{method}",'
                f'"uri":"{_esc_json(uri)}","proto":"HTTP/1.1","status":{status},'
                f'"bytes":{total},"body_bytes":{body},"referer":"","ua":"{_esc_json(ua)}",'
                f'"accept":"*/*","rt":0.{self.rng.randint(0, 999):03d},"host":"piwheels.test"}}'
            )
            return line, total
        off = local.utcoffset() or timedelta(0)
        mins = int(off.total_seconds()) // 60
        sign = "+" if mins >= 0 else "-"
        stamp = (
            f"{local.day:02d}/{_MONTHS[local.month - 1]}/{local.year}:"
            f"{local.hour:02d}:{local.minute:02d}:{local.second:02d} "
            f"{sign}{abs(mins) // 60:02d}{abs(mins) % 60:02d}"
        )
        line = (
            f'{addr} - - [{stamp}] "{method} {_esc_nginx(uri)} HTTP/1.1" {status} {body} '
            f'"-" "{_esc_nginx(ua)}"'
        )
        return line, body

    def _request(self, kind: str, when: datetime) -> tuple[str, str | None]:
        """One line of *kind*; returns (line, None) or (line, 'garbage')."""
        rng = self.rng
        t = self.truth
        if kind == "garbage":
            return self._garbage(when), "garbage"
        if kind in ("download", "metadata", "index", "index_root"):
            m = rng.choice(self.machines)
            pkg = self._package()
            if kind == "index_root":
                line, nb = self._line(when, m.addr, "GET", "/simple/", 200, 60000, m.ua)
                t.add("index_root", m.agent, when, None, None, nb, m.dims, m.addr)
                return line, None
            if kind == "index":
                spelling = pkg.spelling if rng.random() < 0.05 else pkg.name
                uri = f"/simple/{spelling}/"
                line, nb = self._line(when, m.addr, "GET", uri, 200, 600 + pkg.size % 30000, m.ua)
                t.add("index", m.agent, when, pkg.name, None, nb, m.dims, m.addr)
                return line, None
            wheel = self._wheel(pkg, m)
            if kind == "metadata":
                uri = f"/simple/{pkg.name}/{wheel}.metadata"
                line, nb = self._line(when, m.addr, "GET", uri, 200, 1500 + pkg.size % 4000, m.ua)
                t.add("metadata", m.agent, when, pkg.name, None, nb, m.dims, m.addr)
                return line, None
            uri = f"/simple/{pkg.name}/{wheel}"
            line, nb = self._line(when, m.addr, "GET", uri, 200, pkg.size, m.ua)
            t.add("download", m.agent, when, pkg.name, None, nb, m.dims, m.addr)
            return line, None
        addr = rng.choice(self.others)
        if kind in ("download-other", "download-direct"):
            pkg = self._package()
            ua = rng.choice(OTHER_INSTALLERS if kind == "download-other" else BROWSERS + TOOLS)
            agent = "other-installer" if kind == "download-other" else "direct"
            uri = f"/simple/{pkg.name}/{self._wheel(pkg, None)}"
            line, nb = self._line(when, addr, "GET", uri, 200, pkg.size, ua)
            dims = None
            if agent == "other-installer":
                dims = {d: None for d in DIMS}
                dims["installer_name"], dims["installer_version"] = ua.split("/")
            t.add("download", agent, when, pkg.name, None, nb, dims, addr)
            return line, None
        if kind in ("project", "json"):
            pkg = self._package()
            spelling = pkg.spelling if rng.random() < 0.3 else pkg.name
            if kind == "project":
                ua = rng.choice(BROWSERS)
                uri = rng.choice([f"/project/{spelling}/", f"/project/{spelling}",
                                  f"/project/{spelling}/index.html"])  # fmt: skip
                body = 8000 + pkg.size % 20000
            else:
                ua = rng.choice(TOOLS)
                uri = rng.choice([f"/project/{spelling}/json/", f"/project/{spelling}/json"])
                body = 3000 + pkg.size % 9000
            line, nb = self._line(when, addr, "GET", uri, 200, body, ua)
            t.add(kind, "direct", when, pkg.name, None, nb, None, addr)
            return line, None
        if kind == "page":
            name = rng.choice(["home", "home", *SITE_PAGES])
            uri = "/" if name == "home" else f"/{name}.html"
            line, nb = self._line(when, addr, "GET", uri, 200, 5000, rng.choice(BROWSERS))
            t.add("page", "direct", when, None, name, nb, None, addr)
            return line, None
        if kind == "bot":
            pkg = self._package()
            wheel = f"/simple/{pkg.name}/{self._wheel(pkg, None)}"
            uri = rng.choice(
                [f"/project/{pkg.name}/", f"/simple/{pkg.name}/", "/", wheel, "/robots.txt"]
            )
            status = rng.choice([200, 200, 200, 404, 304])
            line, nb = self._line(when, addr, "GET", uri, status, 4000, rng.choice(BOTS))
            t.add("bot", "bot", when, None, None, nb, None, addr)
            return line, None
        # noise: requests that must count as "other", never as downloads or hits
        m = rng.choice(self.machines)
        pkg = self._package()
        whl = f"/simple/{pkg.name}/{self._wheel(pkg, m)}"
        choice = rng.randrange(10)
        if choice == 0:
            req = (m.addr, "HEAD", whl, 200, 0, m.ua)
        elif choice == 1:
            req = (m.addr, "GET", whl, 206, 65536, m.ua)
        elif choice == 2:
            req = (m.addr, "GET", f"/simple/{pkg.name}/", 304, 0, m.ua)
        elif choice == 3:
            req = (m.addr, "GET", f"/simple/no-such-{rng.randrange(999)}/", 404, 150, m.ua)
        elif choice == 4:
            req = (addr, "GET", f"/simple/{pkg.name}/", 200, 3000, rng.choice(BROWSERS))
        elif choice == 5:
            req = (addr, "GET", "/static/site.css", 200, 2500, rng.choice(BROWSERS))
        elif choice == 6:
            req = (addr, "GET", "/favicon.ico", 404, 150, rng.choice(BROWSERS))
        elif choice == 7:
            req = (addr, "POST", "/", 405, 150, rng.choice(TOOLS))
        elif choice == 8:
            req = (addr, "GET", rng.choice(HOSTILE), 200, 150, rng.choice(TOOLS))
        else:
            req = (m.addr, "GET", f"{whl}.metadata", 404, 150, m.ua)
        who, method, uri, status, body, ua = req
        line, nb = self._line(when, who, method, uri, status, body, ua)
        agent = "pip" if ua == m.ua else "direct"
        t.add("other", agent, when, None, None, nb, None, who)
        return line, None

    def _garbage(self, when: datetime) -> str:
        rng = self.rng
        choice = rng.randrange(7)
        if choice == 0:  # truncated JSON (a write cut short)
            m = rng.choice(self.machines)
            line, _ = self._line(when, m.addr, "GET", "/simple/numpy/", 200, 100, m.ua)
            if line.startswith("{"):
                return line[: rng.randrange(5, len(line) - 2)]
            return "{" + line[: rng.randrange(5, len(line) - 2)]
        if choice == 1:  # binary junk (TLS on the HTTP port)
            return "".join(chr(rng.randrange(0x21, 0x7F)) for _ in range(rng.randrange(8, 60)))
        if choice == 2:
            return '{"time":"2021-10-01T00:00:00+00:00","addr":"x","method":"GET","uri":"/",' \
                '"proto":"HTTP/1.1","status":"abc","bytes":1,"body_bytes":1,"referer":"",' \
                '"ua":"","accept":"","rt":0.0,"host":""}'  # fmt: skip
        if choice == 3:
            return "[1, 2, 3]"
        if choice == 4:
            return '10.0.0.1 - - [99/Foo/2021:99:99:99 +0000] "GET / HTTP/1.1" 200 5 "-" "x"'
        if choice == 5:
            return ""
        return "x" * 20000  # overlong

    # -- the whole log ----------------------------------------------------------

    def write(self, out: IO[str]) -> dict[str, Any]:
        """Write the log to *out* and return the ground truth."""
        rng = self.rng
        kinds = [k for k, _ in MIX]
        weights = [w for _, w in MIX]
        spike = self.spike
        spike_days = set(spike.days) if spike else set()
        spike_machines = []
        if spike:
            spike_machines = [
                m
                for m in self.machines
                if m.dims["py_version"] == spike.py_version and m.agent == spike.installer
            ]
            if not spike_machines:
                raise ValueError(f"no {spike.installer} clients with Python {spike.py_version}")
        for d in range(self.days):
            day = datetime.combine(self.start + timedelta(days=d), datetime.min.time(), UTC)
            factor = 1.0 + 0.1 * math.sin(d / 7 * 2 * math.pi) + rng.uniform(-0.05, 0.05)
            n = int(self.lines_per_day * factor)
            events: list[tuple[datetime, str]] = []
            hours = rng.choices(range(24), HOUR_WEIGHTS, k=n)
            for h, kind in zip(hours, rng.choices(kinds, weights, k=n), strict=True):
                events.append((day + timedelta(hours=h, seconds=rng.randrange(3600)), kind))
            if spike and d in spike_days:
                extra = int(self.lines_per_day * spike.factor)
                spike_hours = rng.choices(range(24), HOUR_WEIGHTS, k=extra)
                for h in spike_hours:
                    events.append((day + timedelta(hours=h, seconds=rng.randrange(3600)), "spike"))
            events.sort(key=lambda e: e[0])
            for when, kind in events:
                if kind == "spike":
                    assert spike is not None
                    m = rng.choice(spike_machines)
                    # The first package gets about twice the others (as Flask-Login did).
                    w = [2.0] + [1.0] * (len(spike.packages) - 1)
                    pkg = self.by_name[rng.choices(spike.packages, w)[0]]
                    uri = f"/simple/{pkg.name}/{self._wheel(pkg, m)}"
                    line, nb = self._line(when, m.addr, "GET", uri, 200, pkg.size, m.ua)
                    self.truth.add("download", m.agent, when, pkg.name, None, nb, m.dims, m.addr)
                else:
                    line, bad = self._request(kind, when)
                    if bad:
                        self.truth.malformed += 1
                out.write(line)
                out.write("\n")
                self.truth.lines += 1
        truth = self.truth.as_dict()
        truth["spike"] = None
        if spike:
            start = self.start
            truth["spike"] = {
                "packages": list(spike.packages),
                "days": [(start + timedelta(days=i)).isoformat() for i in sorted(spike.days)],
                "py_version": spike.py_version,
                "installer": spike.installer,
                "package_days": {
                    p: _counter_dict(self.truth.package_days[p]) for p in spike.packages
                },
            }
        truth["params"] = {
            "days": self.days,
            "lines_per_day": self.lines_per_day,
            "seed": self.seed,
            "start": self.start.isoformat(),
            "format": self.fmt,
        }
        return truth


def generate(
    path: str | Path,
    *,
    gz: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Write a log to *path* (gzipped if asked) and its truth to ``<path>.truth.json``."""
    path = Path(path)
    gen = Generator(**kwargs)
    opener: Callable[..., IO[str]] = gzip.open if gz else open  # type: ignore[assignment]
    with opener(path, "wt", encoding="utf-8", newline="\n") as out:
        truth = gen.write(out)
    Path(f"{path}.truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True))
    return truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--lines-per-day", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=date.fromisoformat, default=date(2021, 10, 1))
    ap.add_argument("--packages", type=int, default=300)
    ap.add_argument("--format", choices=["json", "combined", "mixed"], default="json")
    ap.add_argument("--utc-offset", type=int, default=0, help="hours east of UTC in the log")
    ap.add_argument("--spike-days", default="", help="comma-separated day indices, e.g. 20,21")
    ap.add_argument("--spike-packages", default=",".join(SPIKE_PACKAGES))
    ap.add_argument("--spike-python", default="2.7.16")
    ap.add_argument("--spike-installer", default="pip")
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    spike = None
    if args.spike_days:
        spike = SpikeSpec(
            packages=[p for p in args.spike_packages.split(",") if p],
            days=[int(d) for d in args.spike_days.split(",")],
            py_version=args.spike_python,
            installer=args.spike_installer,
        )
    truth = generate(
        args.output,
        gz=args.gzip,
        days=args.days,
        lines_per_day=args.lines_per_day,
        seed=args.seed,
        start=args.start,
        packages=args.packages,
        fmt=args.format,
        utc_offset=args.utc_offset,
        spike=spike,
    )
    print(f"wrote {truth['lines']} lines ({truth['malformed']} malformed) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
