"""Settings: converters, sources and their precedence, and error reports."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from piwheels.errors import ConfigError
from piwheels.settings import (
    CONVERTERS,
    Override,
    Settings,
    example_config,
    load_settings,
    settings_reference_rst,
    user_config_path,
)

td = dt.timedelta


def load(
    system: Path | None = None,
    user: Path | None = None,
    files: tuple[Path, ...] = (),
    environ: dict[str, str] | None = None,
    overrides: tuple[Override, ...] = (),
) -> Settings:
    return load_settings(
        system_path=system,
        user_path=user,
        config_files=files,
        environ={} if environ is None else environ,
        overrides=overrides,
    )


def problems(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(**kwargs)  # type: ignore[arg-type]
    return info.value.problems


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults and precedence -------------------------------------------------


def test_defaults() -> None:
    settings = load()
    assert settings == Settings()
    assert settings.database.dsn == "postgresql:///piwheels"
    assert settings.database.pool_size == 4
    assert settings.master.output_path == Path("/var/www/piwheels")
    assert settings.master.builder_endpoint == "tcp://127.0.0.1:5555"
    assert settings.master.status_endpoint == "ipc:///run/piwheels/status"
    assert settings.master.builder_timeout == td(minutes=5)
    assert settings.master.build_timeout == td(hours=3)
    assert settings.master.max_file_size == 1 << 30
    assert settings.master.page_coalesce == td(milliseconds=50)
    assert settings.master.base_url is None
    assert settings.master.dev_mode is False
    assert settings.upstream.url is None
    assert settings.upstream.local_path is None
    assert settings.upstream.reconcile_interval == td(hours=24)
    assert settings.builder.label == socket.gethostname()
    assert settings.builder.build_dir == Path(tempfile.gettempdir())
    assert settings.builder.python == Path(sys.executable)
    assert settings.builder.memory_limit == 4 << 30
    assert settings.builder.sandbox == "auto"
    assert settings.builder.import_test is True
    assert settings.keys.curve is True
    assert settings.keys.secret_key_file is None
    assert settings.logger.format == "auto"
    assert settings.logger.batch_size == 5000
    assert settings.logger.address_mode == "hash"


def test_precedence_every_level(tmp_path: Path) -> None:
    system = write(
        tmp_path / "system.conf", "[master]\nbuild_timeout = 1m\n[database]\npool_size = 7\n"
    )
    user = write(tmp_path / "user.conf", "[master]\nbuild_timeout = 2m\n")
    extra = write(tmp_path / "extra.conf", "[master]\nbuild_timeout = 3m\n")
    env = {"PIWHEELS_MASTER_BUILD_TIMEOUT": "4m"}
    cli = (Override("master", "build_timeout", "5m", "--build-timeout"),)

    assert load().master.build_timeout == td(hours=3)
    assert load(system).master.build_timeout == td(minutes=1)
    assert load(system, user).master.build_timeout == td(minutes=2)
    assert load(system, user, (extra,)).master.build_timeout == td(minutes=3)
    assert load(system, user, (extra,), env).master.build_timeout == td(minutes=4)
    final = load(system, user, (extra,), env, cli)
    assert final.master.build_timeout == td(minutes=5)
    # A key only the lowest layer sets survives every layer above it.
    assert final.database.pool_size == 7


def test_config_files_apply_in_order(tmp_path: Path) -> None:
    one = write(tmp_path / "one.conf", "[builder]\nlabel = one\nsandbox = off\n")
    two = write(tmp_path / "two.conf", "[builder]\nlabel = two\n")
    settings = load(files=(one, two))
    assert settings.builder.label == "two"
    assert settings.builder.sandbox == "off"


def test_missing_system_and_user_files_are_fine(tmp_path: Path) -> None:
    assert load(tmp_path / "nope.conf", tmp_path / "nope2.conf") == Settings()


def test_missing_config_option_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    assert problems(files=(missing,)) == [f"{missing}: no such file"]


def test_user_config_path_follows_xdg(tmp_path: Path) -> None:
    assert user_config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "piwheels" / "piwheels.conf"
    )
    assert user_config_path({"HOME": str(tmp_path)}) == (
        tmp_path / ".config" / "piwheels" / "piwheels.conf"
    )


def test_file_syntax_leniencies(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "x.conf",
        "[Master]\n"
        "Build-Timeout = 1h30m   # an inline comment\n"
        'base_url = ""\n'
        "output_path = '/srv/piwheels'\n"
        "[upstream]\n"
        "url = https://index.example/simple/\n"
        "local_path =\n",
    )
    settings = load(conf)
    assert settings.master.build_timeout == td(hours=1, minutes=30)
    assert settings.master.base_url is None
    assert settings.master.output_path == Path("/srv/piwheels")
    assert settings.upstream.url == "https://index.example/simple/"
    assert settings.upstream.local_path is None


def test_no_interpolation(tmp_path: Path) -> None:
    conf = write(tmp_path / "x.conf", "[database]\ndsn = postgresql://u:p%%40x@h/db%(x)s\n")
    assert load(conf).database.dsn == "postgresql://u:p%%40x@h/db%(x)s"


def test_environment_values() -> None:
    settings = load(
        environ={
            "PIWHEELS_UPSTREAM_URL": "http://127.0.0.1:8080/simple/",
            "PIWHEELS_KEYS_CURVE": "no",
            "PIWHEELS_BUILDER_MEMORY_LIMIT": "1.5G",
            # Variables that name none of our sections are not settings.
            "PIWHEELS_TEST_DSN": "whatever",
            "HOME": "/nowhere",
        }
    )
    assert settings.upstream.url == "http://127.0.0.1:8080/simple/"
    assert settings.keys.curve is False
    assert settings.builder.memory_limit == 3 << 29


# -- errors --------------------------------------------------------------------


def test_unknown_section_and_key(tmp_path: Path) -> None:
    conf = write(
        tmp_path / "x.conf",
        "[mastr]\noutput_path = /x\n[master]\nbulid_timeout = 1h\n[DEFAULT]\nfoo = 1\n",
    )
    found = problems(system=conf)
    assert found == [
        f"{conf} [mastr]: unknown section (did you mean 'master'?)",
        f"{conf} [master] bulid_timeout: unknown setting (did you mean 'build_timeout'?)",
        f"{conf} [DEFAULT]: unknown section",
    ]


def test_unreadable_file_is_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "conf.d"
    folder.mkdir()
    (found,) = problems(user=folder)
    assert found.startswith(f"{folder}: cannot read: ")


def test_file_not_utf8(tmp_path: Path) -> None:
    conf = tmp_path / "x.conf"
    conf.write_bytes(b"[master]\noutput_path = /caf\xe9\n")
    assert problems(system=conf) == [f"{conf}: not UTF-8 text (byte 27)"]


@pytest.mark.parametrize(
    "text, why",
    [
        ("output_path = /x\n", "File contains no section headers"),
        ("[master]\ndev_mode = 1\ndev_mode = 0\n", "option 'dev_mode' in section 'master' already"),
        ("[master]\n[master]\n", "section 'master' already exists"),
        ("[master]\nthis line has no equals sign\n", "Source contains parsing errors"),
    ],
)
def test_unparsable_file(tmp_path: Path, text: str, why: str) -> None:
    conf = write(tmp_path / "x.conf", text)
    (found,) = problems(files=(conf,))
    assert found.startswith(f"{conf}: cannot parse: ")
    assert why in found
    assert "\n" not in found


def test_bad_environment_variables() -> None:
    found = problems(
        environ={
            "PIWHEELS_MASTER_BUILD_TIMEOUT": "soon",
            "PIWHEELS_MASTER_BUILD_TIMOUT": "1h",
            "PIWHEELS_KEYS": "x",
        }
    )
    assert found == [
        "PIWHEELS_KEYS: unknown setting [keys] (none)",
        "PIWHEELS_MASTER_BUILD_TIMEOUT: 'soon' is not a duration (e.g. 90, 90s, 5m, 3h, 2d, 1h30m)",
        "PIWHEELS_MASTER_BUILD_TIMOUT: unknown setting [master] build_timout"
        " (did you mean 'build_timeout'?)",
    ]


def test_every_problem_reported_together(tmp_path: Path) -> None:
    system = write(
        tmp_path / "system.conf",
        "[master]\nbuild_timeout = forever\nmax_file_size = huge\n[builder]\nsandbox = maybe\n",
    )
    user = write(tmp_path / "user.conf", "[database]\npool_size = 0\ncolour = blue\n")
    found = problems(
        system=system,
        user=user,
        environ={"PIWHEELS_LOGGER_BATCH_SIZE": "many"},
        overrides=(Override("master", "builder_endpoint", "udp://x:1", "--builder-endpoint"),),
    )
    assert len(found) == 7
    assert found[0].startswith(f"{system} [master] build_timeout: 'forever' is not a duration")
    assert found[1].startswith(f"{system} [master] max_file_size: 'huge' is not a size")
    assert found[2] == f"{system} [builder] sandbox: 'maybe' is not one of auto, on, off"
    assert found[3] == f"{user} [database] pool_size: 0 is too small (at least 1)"
    assert found[4] == f"{user} [database] colour: unknown setting"
    assert found[5] == "PIWHEELS_LOGGER_BATCH_SIZE: 'many' is not a whole number"
    assert found[6].startswith("--builder-endpoint: 'udp://x:1': unsupported transport 'udp'")


def test_bad_value_in_a_lower_layer_is_reported_even_if_overridden(tmp_path: Path) -> None:
    system = write(tmp_path / "s.conf", "[master]\ndev_mode = perhaps\n")
    found = problems(system=system, environ={"PIWHEELS_MASTER_DEV_MODE": "yes"})
    assert found == [
        f"{system} [master] dev_mode: 'perhaps' is not a yes/no value"
        " (use true/false, yes/no, on/off or 1/0)"
    ]


def test_builder_intervals_defaults_and_values(tmp_path: Path) -> None:
    b = Settings().builder
    assert (b.master_timeout, b.heartbeat, b.sleep_max) == (
        td(seconds=60),
        td(seconds=5),
        td(seconds=60),
    )
    assert (b.reconnect_min, b.reconnect_max) == (td(seconds=1), td(seconds=60))
    conf = write(
        tmp_path / "b.conf",
        "[builder]\nmaster_timeout = 2m\nheartbeat = 1.5\nsleep_max = 30s\n"
        "reconnect_min = 0.5s\nreconnect_max = 5m\n",
    )
    b = load(files=(conf,)).builder
    assert b.master_timeout == td(minutes=2) and b.heartbeat == td(seconds=1.5)
    assert b.sleep_max == td(seconds=30)
    assert (b.reconnect_min, b.reconnect_max) == (td(seconds=0.5), td(minutes=5))


@pytest.mark.parametrize("key", ["master_timeout", "heartbeat", "sleep_max", "reconnect_min"])
def test_builder_intervals_must_be_positive_durations(key: str) -> None:
    var = f"PIWHEELS_BUILDER_{key.upper()}"
    assert problems(environ={var: "0"}) == [f"{var}: '0' must be longer than zero"]
    (found,) = problems(environ={var: "often"})
    assert found.startswith(f"{var}: 'often' is not a duration")


def test_builder_intervals_that_contradict_each_other() -> None:
    found = problems(
        environ={
            "PIWHEELS_BUILDER_RECONNECT_MIN": "2m",
            "PIWHEELS_BUILDER_RECONNECT_MAX": "1m",
        }
    )
    assert found == ["[builder] reconnect_min (2m) is longer than reconnect_max (1m)"]


def test_upstream_url_and_local_path_exclusive() -> None:
    found = problems(
        environ={"PIWHEELS_UPSTREAM_URL": "http://h/simple/", "PIWHEELS_UPSTREAM_LOCAL_PATH": "/x"}
    )
    assert found == ["[upstream] url and local_path are both set; choose one"]


def test_config_error_message_is_one_line_per_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(environ={"PIWHEELS_DATABASE_POOL_SIZE": "x", "PIWHEELS_MASTER_DEV_MODE": "x"})
    assert len(info.value.problems) == 2
    assert "PIWHEELS_DATABASE_POOL_SIZE" in str(info.value)
    assert "PIWHEELS_MASTER_DEV_MODE" in str(info.value)


# -- converters ----------------------------------------------------------------

GOOD = [
    ("int", "12", 12),
    ("int", " -3 ", -3),
    ("positive_int", "1", 1),
    ("port", "65535", 65535),
    ("port", "1", 1),
    ("bool", "true", True),
    ("bool", "Yes", True),
    ("bool", "on", True),
    ("bool", "1", True),
    ("bool", "FALSE", False),
    ("bool", "no", False),
    ("bool", "off", False),
    ("bool", "0", False),
    ("duration", "90", td(seconds=90)),
    ("duration", "90s", td(seconds=90)),
    ("duration", "5m", td(minutes=5)),
    ("duration", "3h", td(hours=3)),
    ("duration", "2d", td(days=2)),
    ("duration", "1h30m", td(hours=1, minutes=30)),
    ("duration", " 1h 30m 15s ", td(hours=1, minutes=30, seconds=15)),
    ("duration", "1.5h", td(minutes=90)),
    ("duration", "0.25", td(seconds=0.25)),
    ("duration", "0s", td(0)),
    ("positive_duration", "1s", td(seconds=1)),
    ("size", "200", 200),
    ("size", "200K", 200 * 1024),
    ("size", "1.5M", 1536 * 1024),
    ("size", "4G", 4 << 30),
    ("size", "4g", 4 << 30),
    ("size", "4GiB", 4 << 30),
    ("size", "2TB", 2 << 40),
    ("path", "/var/www", Path("/var/www")),
    ("path", "relative/dir", Path("relative/dir")),
    ("path", "~/x", Path(os.path.expanduser("~/x"))),
    ("optional_path", "", None),
    ("optional_path", "/k", Path("/k")),
    ("endpoint", "tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
    ("endpoint", "tcp://*:5555", "tcp://*:5555"),
    ("endpoint", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*"),
    ("endpoint", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"),
    ("endpoint", "tcp://master.example:5555", "tcp://master.example:5555"),
    ("endpoint", "tcp://[::1]:5555", "tcp://[::1]:5555"),
    ("endpoint", "TCP://host:1", "tcp://host:1"),
    ("endpoint", "ipc:///run/piwheels/status", "ipc:///run/piwheels/status"),
    ("endpoint", "ipc://@abstract-name", "ipc://@abstract-name"),
    ("endpoint", "inproc://build-queue", "inproc://build-queue"),
    ("url", "http://127.0.0.1:8080/simple/", "http://127.0.0.1:8080/simple/"),
    ("url", "https://index.example/simple/", "https://index.example/simple/"),
    ("url", "http://[::1]:80/", "http://[::1]:80/"),
    ("url", "file:///srv/sdists", "file:///srv/sdists"),
    ("optional_url", "", None),
    ("dsn", "postgresql:///piwheels", "postgresql:///piwheels"),
    ("dsn", "postgresql+psycopg2://u:p@h:5433/db", "postgresql+psycopg2://u:p@h:5433/db"),
    ("host", "127.0.0.1", "127.0.0.1"),
    ("host", "::1", "::1"),
    ("host", "master.local", "master.local"),
    ("identifier", "piwheels_master", "piwheels_master"),
    ("label", "pi4-bookworm-1", "pi4-bookworm-1"),
]


@pytest.mark.parametrize("kind, text, value", GOOD)
def test_converter_good(kind: str, text: str, value: object) -> None:
    assert CONVERTERS[kind].parse(text) == value


BAD = [
    ("int", "1.5"),
    ("int", "x"),
    ("int", ""),
    ("positive_int", "0"),
    ("positive_int", "-1"),
    ("port", "0"),
    ("port", "65536"),
    ("bool", "maybe"),
    ("bool", ""),
    ("duration", ""),
    ("duration", "soon"),
    ("duration", "5x"),
    ("duration", "-5m"),
    ("duration", "1h1h"),
    ("duration", "m"),
    ("duration", "5m 3"),
    ("duration", "h5"),
    ("positive_duration", "0"),
    ("positive_duration", "0s"),
    ("size", ""),
    ("size", "4X"),
    ("size", "-1"),
    ("size", "G"),
    ("size", "1.2.3"),
    ("path", ""),
    ("path", "a\0b"),
    ("endpoint", "udp://host:1"),
    ("endpoint", "localhost:5555"),
    ("endpoint", "tcp://host"),
    ("endpoint", "tcp://:5555"),
    ("endpoint", "tcp://host:99999"),
    ("endpoint", "tcp://host:port"),
    ("endpoint", "tcp://bad host:1"),
    ("endpoint", "tcp://[nope]:1"),
    ("endpoint", "ipc://"),
    ("endpoint", "ipc:///" + "a" * 120),
    ("endpoint", "inproc://"),
    ("url", "ftp://host/x"),
    ("url", "http://"),
    ("url", "http://host:port/"),
    ("url", "http://bad_host/"),
    ("url", "not a url"),
    ("url", "file://"),
    ("url", "index.example/simple"),
    ("dsn", "mysql://db"),
    ("dsn", ""),
    ("host", ""),
    ("host", "bad host"),
    ("host", "-dash"),
    ("identifier", "1abc"),
    ("identifier", "a-b"),
    ("label", "has space"),
    ("label", "x" * 65),
    ("label", ""),
]


@pytest.mark.parametrize("kind, text", BAD)
def test_converter_bad(kind: str, text: str) -> None:
    with pytest.raises(ValueError) as info:
        CONVERTERS[kind].parse(text)
    message = str(info.value)
    assert message and "\n" not in message
    # The message shows the bad value (or says it was empty).
    shown = repr(text.strip()) if kind in ("path", "optional_path") else repr(text)
    assert shown in message or text.strip() in message or "empty" in message


def test_choice_normalises_case() -> None:
    settings = load(environ={"PIWHEELS_BUILDER_SANDBOX": "ON", "PIWHEELS_LOGGER_FORMAT": "Nginx"})
    assert settings.builder.sandbox == "on"
    assert settings.logger.format == "nginx"


def test_prefix_bits_range() -> None:
    found = problems(
        environ={"PIWHEELS_LOGGER_IPV4_PREFIX": "33", "PIWHEELS_LOGGER_IPV6_PREFIX": "64"}
    )
    assert found == ["PIWHEELS_LOGGER_IPV4_PREFIX: 33 is too large (at most 32)"]


@pytest.mark.parametrize(
    "kind, value, text",
    [
        ("duration", td(seconds=90), "1m30s"),
        ("duration", td(hours=1, minutes=30), "1h30m"),
        ("duration", td(days=2, seconds=1), "2d1s"),
        ("duration", td(seconds=1.5), "1.5s"),
        ("duration", td(minutes=1, seconds=0.5), "1m0.5s"),
        ("duration", td(0), "0s"),
        ("size", 1 << 30, "1G"),
        ("size", 3 << 29, "1536M"),
        ("size", 1000, "1000"),
        ("size", 0, "0"),
        ("bool", True, "true"),
        ("optional_path", None, ""),
    ],
)
def test_converter_format_round_trip(kind: str, value: object, text: str) -> None:
    conv = CONVERTERS[kind]
    assert conv.format(value) == text
    assert conv.parse(text) == value


def test_every_default_formats_and_parses_back() -> None:
    defaults = Settings()
    for section, klass in Settings.section_classes().items():
        for f in dataclasses.fields(klass):
            conv = f.metadata["converter"]
            value = getattr(getattr(defaults, section), f.name)
            assert conv.parse(conv.format(value)) == value, (section, f.name)


# -- description and docs ------------------------------------------------------


def test_describe_covers_every_key() -> None:
    infos = Settings.describe()
    keys = {(i.section, i.key) for i in infos}
    for section, klass in Settings.section_classes().items():
        for f in dataclasses.fields(klass):
            assert (section, f.name) in keys
    envs = [i.env for i in infos]
    assert len(envs) == len(set(envs))
    for info in infos:
        assert info.help.endswith(".")
        assert info.env == f"PIWHEELS_{info.section}_{info.key}".upper()
        assert info.option.startswith("--")
    by_key = {(i.section, i.key): i for i in infos}
    assert by_key["master", "build_timeout"].default == "3h"
    assert by_key["master", "max_file_size"].default == "1G"
    assert by_key["master", "build_timeout"].option == "--build-timeout"
    assert by_key["builder", "label"].default == "the host name"
    assert by_key["builder", "label"].computed
    assert by_key["builder", "sandbox"].choices == ("auto", "on", "off")
    assert by_key["upstream", "url"].default == ""


def test_reference_rst_is_valid_and_complete() -> None:
    import docutils.core as docutils_core  # installed with sphinx, a test dependency

    text = settings_reference_rst()
    # halt_level 2 turns any docutils warning into an exception.
    tree = docutils_core.publish_doctree(
        text, settings_overrides={"halt_level": 2, "report_level": 2}
    )
    rendered = tree.astext()
    for info in Settings.describe():
        assert info.key in rendered
        assert info.env in rendered
    assert "[keys]" in rendered
    # Machine-specific defaults are described, never written out.
    assert "the host name" in rendered
    assert "the system's temporary folder" in rendered


def test_example_config_uncommented_gives_defaults(tmp_path: Path) -> None:
    lines = []
    for line in example_config().splitlines():
        # Keys whose default depends on the machine stay commented out.
        if re.match(r"#[a-z0-9_]+ = ", line) and "<" not in line:
            line = line[1:]
        lines.append(line)
    uncommented = sum(1 for line in lines if re.match(r"[a-z0-9_]+ = ", line))
    assert uncommented == sum(1 for info in Settings.describe() if not info.computed)
    conf = write(tmp_path / "example.conf", "\n".join(lines))
    assert load(conf) == Settings()


def test_replace() -> None:
    settings = Settings().replace("master", output_path=Path("/tmp/out"), dev_mode=True)
    assert settings.master.output_path == Path("/tmp/out")
    assert settings.master.dev_mode is True
    assert settings.database == Settings().database
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.master.dev_mode = False  # type: ignore[misc]
