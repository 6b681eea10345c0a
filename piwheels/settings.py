"""The one typed settings object shared by every executable.

Each ``[section]`` of the configuration is a frozen dataclass whose fields
carry their help text and converter in the field metadata; :class:`Settings`
collects the sections.  :func:`load_settings` layers the sources in order of
precedence::

    defaults < /etc/piwheels.conf < ~/.config/piwheels/piwheels.conf
             < --config FILE... < PIWHEELS_<SECTION>_<KEY> < command line

Every source is checked in full, and every problem found (unknown section or
key, bad value, unreadable file, bad environment variable, bad option) is
collected and raised together as one :class:`~piwheels.errors.ConfigError`,
each problem naming where it came from.
"""

# RUF009 cannot tell that setting() is a field specifier like dataclasses.field.
# ruff: noqa: RUF009

from __future__ import annotations

import configparser
import dataclasses
import datetime as dt
import difflib
import ipaddress
import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from piwheels.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "SYSTEM_CONFIG",
    "BuilderSettings",
    "Converter",
    "DatabaseSettings",
    "KeysSettings",
    "LoggerSettings",
    "MasterSettings",
    "MonitorSettings",
    "Override",
    "SettingInfo",
    "Settings",
    "UpstreamSettings",
    "example_config",
    "load_settings",
    "settings_reference_rst",
    "user_config_path",
]

log = logging.getLogger(__name__)

ENV_PREFIX = "PIWHEELS_"
SYSTEM_CONFIG = Path("/etc/piwheels.conf")

# configparser's DEFAULT section silently copies its keys into every section,
# which would turn one stray key into an error per section; a name nobody can
# type turns [DEFAULT] into an ordinary (unknown) section instead.
_NO_DEFAULT_SECTION = "\0piwheels-no-default"


def user_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user configuration file (``$XDG_CONFIG_HOME`` honoured)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return Path(base) / "piwheels" / "piwheels.conf"


# --------------------------------------------------------------------------
# Converters: str -> value, raising ValueError with a message for a person.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Converter:
    """How one kind of setting is parsed from text and shown as text."""

    name: str
    parse: Callable[[str], Any]
    format: Callable[[Any], str] = str
    metavar: str = "VALUE"
    choices: tuple[str, ...] = ()


def _parse_int(text: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{value} is too small (at least {minimum})")
    if maximum is not None and value > maximum:
        raise ValueError(f"{value} is too large (at most {maximum})")
    return value


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a yes/no value (use true/false, yes/no, on/off or 1/0)")


def _format_bool(value: bool) -> str:
    return "true" if value else "false"


_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.I)


def _parse_duration(text: str) -> dt.timedelta:
    word = text.strip()
    hint = "(e.g. 90, 90s, 5m, 3h, 2d, 1h30m)"
    if not word:
        raise ValueError(f"empty duration {hint}")
    if re.fullmatch(r"\d+(?:\.\d+)?", word):
        return dt.timedelta(seconds=float(word))
    seconds = 0.0
    pos = 0
    seen: set[str] = set()
    for match in _DURATION_PART.finditer(word):
        if word[pos : match.start()].strip():
            break
        unit = match.group(2).lower()
        if unit in seen:
            raise ValueError(f"{text!r} repeats the unit {unit!r} {hint}")
        seen.add(unit)
        seconds += float(match.group(1)) * _DURATION_UNITS[unit]
        pos = match.end()
    if not seen or word[pos:].strip():
        raise ValueError(f"{text!r} is not a duration {hint}")
    return dt.timedelta(seconds=seconds)


def _parse_positive_duration(text: str) -> dt.timedelta:
    value = _parse_duration(text)
    if value <= dt.timedelta(0):
        raise ValueError(f"{text!r} must be longer than zero")
    return value


def _format_duration(value: dt.timedelta) -> str:
    total = value.total_seconds()
    if total == 0:
        return "0s"
    whole = int(total)
    frac = total - whole
    parts = []
    for unit, size in _DURATION_UNITS.items():
        count, whole = divmod(whole, size)
        if count:
            parts.append(f"{count}{unit}")
    if frac:
        # Fractions only ever come from the seconds; show them there.
        secs = (parts.pop() if parts and parts[-1].endswith("s") else "0s")[:-1]
        parts.append(f"{int(secs) + frac:g}s")
    return "".join(parts)


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.I)


def _parse_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 200, 200K, 1.5M, 4G; binary units)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def _format_size(value: int) -> str:
    for unit in ("T", "G", "M", "K"):
        size = _SIZE_UNITS[unit]
        if value and value % size == 0:
            return f"{value // size}{unit}"
    return str(value)


def _parse_path(text: str) -> Path:
    word = text.strip()
    if not word:
        raise ValueError("empty path")
    if "\0" in word:
        raise ValueError(f"{text!r} contains a NUL character")
    return Path(os.path.expanduser(word))


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap *parse* so that an empty value means None (nothing configured)."""

    def parse_optional(text: str) -> Any:
        return None if not text.strip() else parse(text)

    return parse_optional


def _format_optional(fmt: Callable[[Any], str]) -> Callable[[Any], str]:
    def format_optional(value: Any) -> str:
        return "" if value is None else fmt(value)

    return format_optional


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _check_host(host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        return host
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or address")
    return host


def _parse_host(text: str) -> str:
    word = text.strip()
    if not word:
        raise ValueError("empty host name")
    try:
        ipaddress.IPv6Address(word)
        return word
    except ValueError:
        return _check_host(word)


def _parse_port(text: str) -> int:
    return _parse_int(text, minimum=1, maximum=65535)


# Linux's sun_path holds 108 bytes including the terminating NUL.
_IPC_MAX = 107


def _parse_endpoint(text: str) -> str:
    word = text.strip()
    hint = "(tcp://HOST:PORT, tcp://*:PORT, ipc://PATH or inproc://NAME)"
    scheme, sep, rest = word.partition("://")
    if not sep:
        raise ValueError(f"{text!r} is not a ZeroMQ endpoint {hint}")
    scheme = scheme.lower()
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{text!r} needs a host and a port {hint}")
        try:
            if host != "*":
                _check_host(host)
            if port != "*":
                # Port 0 asks the system for a free port, as ``*`` does.
                _parse_int(port, minimum=0, maximum=65535)
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    elif scheme == "ipc":
        if not rest:
            raise ValueError(f"{text!r} has no socket path {hint}")
        if len(rest.encode()) > _IPC_MAX:
            raise ValueError(f"{text!r}: socket path longer than {_IPC_MAX} bytes")
    elif scheme == "inproc":
        if not rest:
            raise ValueError(f"{text!r} has no name {hint}")
    else:
        raise ValueError(f"{text!r}: unsupported transport {scheme!r} {hint}")
    return f"{scheme}://{rest}"


def _parse_url(text: str) -> str:
    word = text.strip()
    if any(ch.isspace() for ch in word):
        raise ValueError(f"{text!r} contains spaces")
    try:
        parts = urlsplit(word)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URL: {exc}") from None
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"{text!r} has no host")
        try:
            _check_host(parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]")
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    elif parts.scheme == "file":
        if not parts.path:
            raise ValueError(f"{text!r} has no path")
    else:
        raise ValueError(f"{text!r} is not an http, https or file URL")
    return word


def _parse_dsn(text: str) -> str:
    word = text.strip()
    if not re.match(r"postgresql(\+\w+)?://", word):
        raise ValueError(f"{text!r} is not a PostgreSQL URL (postgresql://[user@][host]/dbname)")
    return word


def _parse_identifier(text: str) -> str:
    word = text.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", word):
        raise ValueError(f"{text!r} is not a plain SQL name (letters, digits, underscores)")
    return word


def _parse_label(text: str) -> str:
    word = text.strip()
    if not word or len(word) > 64 or not word.isprintable() or any(c.isspace() for c in word):
        raise ValueError(f"{text!r} is not a label (1 to 64 printable characters, no spaces)")
    return word


def _choice(*options: str) -> Converter:
    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return word

    return Converter("choice", parse, metavar="{" + ",".join(options) + "}", choices=options)


INT = Converter("integer", _parse_int, metavar="N")
POSITIVE_INT = Converter("positive integer", lambda t: _parse_int(t, minimum=1), metavar="N")
PORT = Converter("port", _parse_port, metavar="PORT")
BOOL = Converter("boolean", _parse_bool, _format_bool, metavar="BOOL")
DURATION = Converter("duration", _parse_duration, _format_duration, metavar="DURATION")
POSITIVE_DURATION = Converter(
    "duration", _parse_positive_duration, _format_duration, metavar="DURATION"
)
SIZE = Converter("size", _parse_size, _format_size, metavar="SIZE")
PATH = Converter("path", _parse_path, metavar="PATH")
OPTIONAL_PATH = Converter("path", _optional(_parse_path), _format_optional(str), metavar="PATH")
ENDPOINT = Converter("ZeroMQ endpoint", _parse_endpoint, metavar="ENDPOINT")
URL = Converter("URL", _parse_url, metavar="URL")
OPTIONAL_URL = Converter("URL", _optional(_parse_url), _format_optional(str), metavar="URL")
DSN = Converter("PostgreSQL URL", _parse_dsn, metavar="DSN")
HOST = Converter("host", _parse_host, metavar="HOST")
IDENTIFIER = Converter("SQL name", _parse_identifier, metavar="NAME")
LABEL = Converter("label", _parse_label, metavar="LABEL")

#: Converters by name, for callers that parse values of the same kinds.
CONVERTERS: dict[str, Converter] = {
    "int": INT,
    "positive_int": POSITIVE_INT,
    "port": PORT,
    "bool": BOOL,
    "duration": DURATION,
    "positive_duration": POSITIVE_DURATION,
    "size": SIZE,
    "path": PATH,
    "optional_path": OPTIONAL_PATH,
    "endpoint": ENDPOINT,
    "url": URL,
    "optional_url": OPTIONAL_URL,
    "dsn": DSN,
    "host": HOST,
    "identifier": IDENTIFIER,
    "label": LABEL,
}


def setting(
    default: Any = dataclasses.MISSING,
    *,
    converter: Converter,
    help: str,
    factory: Callable[[], Any] | None = None,
    default_text: str | None = None,
    option: str | None = None,
    env: str | None = None,
) -> Any:
    """Declare one key of a section: its default, converter and help text.

    *default_text* replaces the shown default where the real one depends on
    the machine (the host name, the temporary folder); *option* and *env*
    override the derived ``--key-name`` and ``PIWHEELS_SECTION_KEY`` names.
    """
    metadata = {
        "converter": converter,
        "help": help,
        "default_text": default_text,
        "option": option,
        "env": env,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------
# The sections.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseSettings:
    """The PostgreSQL database of the farm."""

    dsn: str = setting(
        "postgresql:///piwheels",
        converter=DSN,
        help="Database URL; the master should connect as the least-privilege role.",
    )
    pool_size: int = setting(4, converter=POSITIVE_INT, help="Connections in the master's pool.")
    role: str = setting(
        "piwheels",
        converter=IDENTIFIER,
        option="--db-role",
        help="Least-privilege role the master connects as; piw-initdb creates and grants it.",
    )


@dataclass(frozen=True)
class MasterSettings:
    """The master: its output folder, sockets, limits and timers."""

    output_path: Path = setting(
        Path("/var/www/piwheels"),
        converter=PATH,
        help="Folder the static site (index, project pages, wheels, logs) is written to.",
    )
    builder_endpoint: str = setting(
        "tcp://127.0.0.1:5555",
        converter=ENDPOINT,
        help="Where the master listens for builders (use tcp://*:5555 for remote builders).",
    )
    file_endpoint: str = setting(
        "tcp://127.0.0.1:5556",
        converter=ENDPOINT,
        help="Where the master pulls files from builders and importers.",
    )
    status_endpoint: str = setting(
        "ipc:///run/piwheels/status",
        converter=ENDPOINT,
        help="Where the master publishes status for piw-monitor.",
    )
    control_endpoint: str = setting(
        "ipc:///run/piwheels/control",
        converter=ENDPOINT,
        help="Where the master takes control commands (pause, resume, sleep, kill...).",
    )
    admin_endpoint: str = setting(
        "ipc:///run/piwheels/admin",
        converter=ENDPOINT,
        help="Where the master takes requests from the admin tools (local only).",
    )
    log_endpoint: str = setting(
        "ipc:///run/piwheels/logger",
        converter=ENDPOINT,
        help="Where the master takes batches of access-log records from piw-logger.",
    )
    builder_timeout: dt.timedelta = setting(
        dt.timedelta(minutes=5),
        converter=POSITIVE_DURATION,
        help="A builder silent for this long is dropped and its build requeued.",
    )
    build_timeout: dt.timedelta = setting(
        dt.timedelta(hours=3),
        converter=POSITIVE_DURATION,
        help="A build running longer than this is abandoned by the master.",
    )
    max_file_size: int = setting(
        1 << 30, converter=SIZE, help="Largest wheel the master accepts from a builder."
    )
    file_chunk_size: int = setting(
        1 << 20, converter=SIZE, help="Size of each chunk of a file transfer."
    )
    page_coalesce: dt.timedelta = setting(
        dt.timedelta(milliseconds=50),
        converter=DURATION,
        help="A project's pages are written at once when first asked for; further requests "
        "for them within this window of that write are merged into one write at its end.",
    )
    page_workers: int = setting(
        converter=POSITIVE_INT,
        factory=lambda: min(os.cpu_count() or 1, 4),
        default_text="the number of cores, at most 4",
        help="Processes that render and write pages during a full rewrite (piw-rebuild all).",
    )
    stats_interval: dt.timedelta = setting(
        dt.timedelta(seconds=60),
        converter=POSITIVE_DURATION,
        help="How often the homepage and monitor figures are recomputed.",
    )
    min_free_disk: int = setting(
        1 << 30,
        converter=SIZE,
        help="Below this much free space in the output folder the master pauses building.",
    )
    base_url: str | None = setting(
        None,
        converter=OPTIONAL_URL,
        help="Public URL of the site, for absolute links (sitemap); empty = relative links.",
    )
    dev_mode: bool = setting(
        False, converter=BOOL, help="Development mode: debug logging and short timers."
    )


@dataclass(frozen=True)
class UpstreamSettings:
    """The index (or local folder) the master follows for new releases."""

    url: str | None = setting(
        None,
        converter=OPTIONAL_URL,
        option="--upstream-url",
        help="Root of a PEP 691 simple index to follow; empty = none configured.",
    )
    local_path: Path | None = setting(
        None,
        converter=OPTIONAL_PATH,
        option="--upstream-path",
        help="A local folder of source distributions to follow instead of an index.",
    )
    build_index: str | None = setting(
        None,
        converter=OPTIONAL_URL,
        help="Index the builders download sources from; empty = the upstream url.",
    )
    changelog_url: str | None = setting(
        None,
        converter=OPTIONAL_URL,
        help="Optional XML-RPC changelog endpoint, a fast path for finding changes.",
    )
    poll_interval: dt.timedelta = setting(
        dt.timedelta(seconds=60),
        converter=POSITIVE_DURATION,
        help="How often the upstream is asked for changes.",
    )
    reconcile_interval: dt.timedelta = setting(
        dt.timedelta(hours=24),
        converter=POSITIVE_DURATION,
        help="How often a full reconciliation pass over every project runs.",
    )
    timeout: dt.timedelta = setting(
        dt.timedelta(seconds=30),
        converter=POSITIVE_DURATION,
        option="--upstream-timeout",
        help="Timeout of one request to the upstream.",
    )
    max_backoff: dt.timedelta = setting(
        dt.timedelta(minutes=10),
        converter=POSITIVE_DURATION,
        help="Longest wait between retries after upstream faults.",
    )
    build_wheel_only: bool = setting(
        False,
        converter=BOOL,
        help="Also build releases that publish wheels but no source distribution.",
    )

    def check(self) -> list[str]:
        """Problems that involve more than one key of this section."""
        if self.url is not None and self.local_path is not None:
            return ["[upstream] url and local_path are both set; choose one"]
        return []


@dataclass(frozen=True)
class BuilderSettings:
    """A builder: where its master is, and the limits of each build."""

    master_host: str = setting(
        "127.0.0.1", converter=HOST, help="Host name or address of the master."
    )
    builder_port: int = setting(5555, converter=PORT, help="Master's builder port.")
    file_port: int = setting(5556, converter=PORT, help="Master's file transfer port.")
    label: str = setting(
        converter=LABEL,
        factory=socket.gethostname,
        default_text="the host name",
        help="Name this builder shows in the monitor and on build records.",
    )
    build_dir: Path = setting(
        converter=PATH,
        factory=lambda: Path(tempfile.gettempdir()),
        default_text="the system's temporary folder",
        help="Folder in which each build gets a fresh temporary directory.",
    )
    python: Path = setting(
        converter=PATH,
        factory=lambda: Path(sys.executable),
        default_text="the running interpreter",
        help="Python interpreter that builds (its ABI is the builder's ABI).",
    )
    build_timeout: dt.timedelta = setting(
        dt.timedelta(hours=3),
        converter=POSITIVE_DURATION,
        help="Wall-clock limit of one build; the whole process tree is killed after it.",
    )
    memory_limit: int = setting(4 << 30, converter=SIZE, help="Memory limit of one build.")
    min_free_disk: int = setting(
        2 << 30,
        converter=SIZE,
        help="Below this much free space in build_dir the builder stops taking work.",
    )
    sandbox: str = setting(
        "auto",
        converter=_choice("auto", "on", "off"),
        help="Run builds in bubblewrap: auto = when available, on = required, off = never.",
    )
    import_test: bool = setting(
        True,
        converter=BOOL,
        help="Install each wheel in a fresh virtual environment and import its modules.",
    )
    master_timeout: dt.timedelta = setting(
        dt.timedelta(seconds=60),
        converter=POSITIVE_DURATION,
        help="Reconnect when the master has not answered a message for this long.",
    )
    heartbeat: dt.timedelta = setting(
        dt.timedelta(seconds=5),
        converter=POSITIVE_DURATION,
        help="Longest time between BUSY messages while a build runs "
        "(more often when the master asks for it).",
    )
    sleep_max: dt.timedelta = setting(
        dt.timedelta(seconds=60),
        converter=POSITIVE_DURATION,
        help="Longest wait before asking for work again when the master says SLEEP.",
    )
    reconnect_min: dt.timedelta = setting(
        dt.timedelta(seconds=1),
        converter=POSITIVE_DURATION,
        help="First wait before trying to reach the master again; it doubles each try.",
    )
    reconnect_max: dt.timedelta = setting(
        dt.timedelta(seconds=60),
        converter=POSITIVE_DURATION,
        help="Longest wait between attempts to reach the master.",
    )

    def check(self) -> list[str]:
        """Problems that involve more than one key of this section."""
        problems = []
        if self.reconnect_min > self.reconnect_max:
            problems.append(
                f"[builder] reconnect_min ({_format_duration(self.reconnect_min)}) is longer "
                f"than reconnect_max ({_format_duration(self.reconnect_max)})"
            )
        return problems


@dataclass(frozen=True)
class KeysSettings:
    """CurveZMQ keys; plain (unauthenticated) sockets only when curve is off."""

    curve: bool = setting(
        True, converter=BOOL, help="Authenticate and encrypt tcp sockets with CurveZMQ."
    )
    secret_key_file: Path | None = setting(
        None, converter=OPTIONAL_PATH, help="This process's secret key file."
    )
    public_key_file: Path | None = setting(
        None, converter=OPTIONAL_PATH, help="This process's public key file."
    )
    server_public_key_file: Path | None = setting(
        None, converter=OPTIONAL_PATH, help="The master's public key file (clients)."
    )
    authorized_keys_dir: Path | None = setting(
        None,
        converter=OPTIONAL_PATH,
        help="Folder of public keys of the clients the master accepts.",
    )


@dataclass(frozen=True)
class LoggerSettings:
    """piw-logger: how access logs are read and what is kept of them."""

    format: str = setting(
        "auto",
        converter=_choice("auto", "nginx", "combined"),
        option="--log-format",
        help="Access-log format: the project's nginx format, combined, or guessed per line.",
    )
    batch_size: int = setting(
        5000, converter=POSITIVE_INT, help="Records sent to the master in one batch."
    )
    flush_interval: dt.timedelta = setting(
        dt.timedelta(seconds=2),
        converter=POSITIVE_DURATION,
        help="A partial batch is sent after this long.",
    )
    address_mode: str = setting(
        "hash",
        converter=_choice("hash", "prefix"),
        help="How client addresses are kept: salted hash rotated daily, or a network prefix.",
    )
    ipv4_prefix: int = setting(
        24,
        converter=Converter("integer", lambda t: _parse_int(t, minimum=0, maximum=32), metavar="N"),
        help="Bits of an IPv4 address kept in prefix mode.",
    )
    ipv6_prefix: int = setting(
        48,
        converter=Converter(
            "integer", lambda t: _parse_int(t, minimum=0, maximum=128), metavar="N"
        ),
        help="Bits of an IPv6 address kept in prefix mode.",
    )
    drop: bool = setting(
        False,
        converter=BOOL,
        help="Drop records when the master cannot take them (piped from a web server).",
    )


@dataclass(frozen=True)
class MonitorSettings:
    """piw-monitor (its status and control endpoints are the master's)."""

    reconnect_interval: dt.timedelta = setting(
        dt.timedelta(seconds=2),
        converter=POSITIVE_DURATION,
        help="Wait between attempts to reach a master that went away.",
    )


class SettingInfo(NamedTuple):
    """One key, described for documentation and help text."""

    section: str
    key: str
    type: str
    default: str
    help: str
    env: str
    option: str
    choices: tuple[str, ...]
    metavar: str = "VALUE"
    #: True when the default depends on the machine (then *default* is prose).
    computed: bool = False


class Override(NamedTuple):
    """A raw value from the command line, with the option that gave it."""

    section: str
    key: str
    value: str
    source: str


@dataclass(frozen=True)
class Settings:
    """Every section of the configuration."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    master: MasterSettings = field(default_factory=MasterSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    builder: BuilderSettings = field(default_factory=BuilderSettings)
    keys: KeysSettings = field(default_factory=KeysSettings)
    logger: LoggerSettings = field(default_factory=LoggerSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)

    @staticmethod
    def section_classes() -> dict[str, type]:
        """Section name -> section dataclass, in declaration order."""
        return {
            f.name: f.default_factory  # type: ignore[misc]
            for f in dataclasses.fields(Settings)
        }

    @classmethod
    def describe(cls) -> list[SettingInfo]:
        """Every key of every section: type, default, help, env var, option."""
        infos = []
        for section, klass in cls.section_classes().items():
            for f in dataclasses.fields(klass):
                meta = f.metadata
                conv: Converter = meta["converter"]
                if meta["default_text"] is not None:
                    default = meta["default_text"]
                else:
                    default = conv.format(f.default)
                infos.append(
                    SettingInfo(
                        section=section,
                        key=f.name,
                        type=conv.name,
                        default=default,
                        help=meta["help"],
                        env=meta["env"] or f"{ENV_PREFIX}{section}_{f.name}".upper(),
                        option=meta["option"] or "--" + f.name.replace("_", "-"),
                        choices=conv.choices,
                        metavar=conv.metavar,
                        computed=meta["default_text"] is not None,
                    )
                )
        return infos

    def replace(self, section: str, **values: Any) -> Settings:
        """A copy with some keys of one section changed (typed values, for tests)."""
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: dataclasses.replace(current, **values)})


def _fields(section: str) -> dict[str, dataclasses.Field[Any]]:
    klass = Settings.section_classes()[section]
    return {f.name: f for f in dataclasses.fields(klass)}


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unquote(text: str) -> str:
    # People write base_url = "" to mean empty; accept one pair of quotes.
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


class _Loader:
    """Collects values from each source, and every problem on the way."""

    def __init__(self) -> None:
        self.sections = Settings.section_classes()
        self.values: dict[str, dict[str, Any]] = {name: {} for name in self.sections}
        self.problems: list[str] = []

    def set(self, section: str, key: str, raw: str, where: str) -> None:
        conv: Converter = _fields(section)[key].metadata["converter"]
        try:
            self.values[section][key] = conv.parse(raw)
        except ValueError as exc:
            self.problems.append(f"{where}: {exc}")

    def read_file(self, path: Path, *, required: bool) -> None:
        parser = configparser.ConfigParser(
            interpolation=None,
            default_section=_NO_DEFAULT_SECTION,
            inline_comment_prefixes=("#", ";"),
            strict=True,
        )
        try:
            with open(path, encoding="utf-8") as stream:
                parser.read_file(stream, source=str(path))
        except FileNotFoundError:
            if required:
                self.problems.append(f"{path}: no such file")
            return
        except UnicodeDecodeError as exc:
            self.problems.append(f"{path}: not UTF-8 text (byte {exc.start})")
            return
        except OSError as exc:
            self.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            return
        except configparser.Error as exc:
            message = " ".join(str(exc).split())
            self.problems.append(f"{path}: cannot parse: {message}")
            return
        log.debug("reading settings from %s", path)
        for section in parser.sections():
            name = section.strip().lower()
            if name not in self.sections:
                self.problems.append(
                    f"{path} [{section}]: unknown section{_suggest(name, self.sections)}"
                )
                continue
            known = _fields(name)
            for key, raw in parser.items(section):
                norm = key.strip().lower().replace("-", "_")
                where = f"{path} [{section}] {key}"
                if norm not in known:
                    self.problems.append(f"{where}: unknown setting{_suggest(norm, known)}")
                    continue
                self.set(name, norm, _unquote(raw), where)

    def read_environ(self, environ: Mapping[str, str]) -> None:
        for var in sorted(environ):
            if not var.upper().startswith(ENV_PREFIX):
                continue
            section, _, key = var[len(ENV_PREFIX) :].lower().partition("_")
            # Only variables that name one of our sections are settings, so
            # unrelated ones (PIWHEELS_TEST_DSN for the test suite) pass by.
            if section not in self.sections:
                continue
            known = _fields(section)
            if key not in known:
                self.problems.append(
                    f"{var}: unknown setting [{section}] {key or '(none)'}{_suggest(key, known)}"
                )
                continue
            log.debug("setting [%s] %s from %s", section, key, var)
            self.set(section, key, _unquote(environ[var]), var)

    def settings(self) -> Settings:
        built: dict[str, Any] = {}
        for name, klass in self.sections.items():
            section = klass(**self.values[name])
            check = getattr(section, "check", None)
            if check is not None:
                self.problems.extend(check())
            built[name] = section
        if self.problems:
            raise ConfigError(self.problems)
        return Settings(**built)


_DEFAULT = object()


def load_settings(
    *,
    config_files: Sequence[str | os.PathLike[str]] = (),
    system_path: str | os.PathLike[str] | None = SYSTEM_CONFIG,
    user_path: Any = _DEFAULT,
    environ: Mapping[str, str] | None = None,
    overrides: Sequence[Override] = (),
) -> Settings:
    """Load settings from every source in order of precedence.

    *system_path* and *user_path* may be missing files (skipped) or None
    (not read); *user_path* defaults to :func:`user_config_path`.  Files in
    *config_files* must exist.  *environ* defaults to ``os.environ``.
    Raises :class:`ConfigError` listing every problem found.
    """
    environ = os.environ if environ is None else environ
    if user_path is _DEFAULT:
        user_path = user_config_path(environ)
    loader = _Loader()
    if system_path is not None:
        loader.read_file(Path(system_path), required=False)
    if user_path is not None:
        loader.read_file(Path(user_path), required=False)
    for path in config_files:
        loader.read_file(Path(path), required=True)
    loader.read_environ(environ)
    for item in overrides:
        if item.key not in _fields(item.section):
            raise KeyError(f"no setting [{item.section}] {item.key}")
        loader.set(item.section, item.key, item.value, item.source)
    return loader.settings()


# --------------------------------------------------------------------------
# Documentation.
# --------------------------------------------------------------------------


def _rst_text(text: str) -> str:
    return re.sub(r"([\\*`|_])", r"\\\1", text)


def settings_reference_rst(title: str | None = "Configuration reference") -> str:
    """The configuration reference as reStructuredText, for docs/."""
    out: list[str] = []
    if title:
        out += ["=" * len(title), title, "=" * len(title), ""]
    out += [
        "Settings come from, in increasing order of precedence: the defaults,",
        "``/etc/piwheels.conf``, ``~/.config/piwheels/piwheels.conf``, files given",
        "with ``--config``, ``PIWHEELS_<SECTION>_<KEY>`` environment variables,",
        "and command-line options. Files are INI files without interpolation; an",
        "empty value means *not set* for keys that may be empty. Every problem in",
        "every source is reported together, each naming its file, section and key.",
        "",
        "Durations are written like ``90`` (seconds), ``90s``, ``5m``, ``3h``, ``2d``",
        "or ``1h30m``; sizes like ``200``, ``200K``, ``1.5M`` or ``4G`` (binary units);",
        "booleans as true/false, yes/no, on/off or 1/0.",
        "",
    ]
    classes = Settings.section_classes()
    by_section: dict[str, list[SettingInfo]] = {}
    for info in Settings.describe():
        by_section.setdefault(info.section, []).append(info)
    for section, infos in by_section.items():
        heading = f"[{section}]"
        out += [heading, "=" * len(heading) if not title else "-" * len(heading), ""]
        doc = (classes[section].__doc__ or "").strip()
        if doc:
            out += [_rst_text(doc), ""]
        for info in infos:
            if info.computed:
                default = _rst_text(info.default)
            elif info.default:
                default = f"``{info.default}``"
            else:
                default = "empty"
            kind = info.type
            if info.choices:
                kind = "one of " + ", ".join(f"``{c}``" for c in info.choices)
            out += [
                f"``{info.key}``",
                f"    {_rst_text(info.help)}",
                "",
                f"    Type: {kind}. Default: {default}.",
                f"    Environment: ``{info.env}``. Option: ``{info.option}``.",
                "",
            ]
    return "\n".join(out)


def example_config() -> str:
    """A commented configuration file listing every key with its default."""
    out = [
        "# piwheels configuration: every key with its default, commented out.",
        "# Read from /etc/piwheels.conf, then ~/.config/piwheels/piwheels.conf.",
    ]
    classes = Settings.section_classes()
    current = None
    for info in Settings.describe():
        if info.section != current:
            current = info.section
            doc = (classes[current].__doc__ or "").strip()
            out += ["", f"[{current}]", f"# {doc}"]
        value = f"<{info.default}>" if info.computed else info.default
        out += ["", f"# {info.help} ({info.type}; env {info.env})", f"#{info.key} = {value}"]
    return "\n".join(out) + "\n"
