"""The command-line base: options, settings precedence, logging, errors, exit codes."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from piwheels import __version__
from piwheels.cli import _COMMON_OPTIONS, Command, run
from piwheels.errors import EX_CONFIG, EX_SOFTWARE, EX_USAGE, ConfigError
from piwheels.settings import Settings

TASKS = {"upstream-watcher": "piwheels.test.upstream", "page-writer": "piwheels.test.pages"}

Main = Callable[[argparse.Namespace, Settings], "int | None"]


class Recorder:
    """A main function that keeps what it was given."""

    def __init__(self, body: Callable[[argparse.Namespace, Settings], Any] | None = None) -> None:
        self.body = body
        self.args: argparse.Namespace | None = None
        self.settings: Settings | None = None

    def __call__(self, args: argparse.Namespace, settings: Settings) -> int | None:
        self.args = args
        self.settings = settings
        return self.body(args, settings) if self.body else None


@pytest.fixture
def confs(tmp_path: Path) -> dict[str, Path]:
    """Paths for a system and a user file (absent until a test writes them)."""
    return {"system": tmp_path / "system.conf", "user": tmp_path / "user.conf"}


def invoke(
    main: Main,
    argv: list[str],
    confs: dict[str, Path],
    environ: dict[str, str] | None = None,
    **kwargs: Any,
) -> int:
    options: dict[str, Any] = {
        "prog": "piw-test",
        "description": "A test executable.",
        "sections": ("database", "master", "keys"),
        "tasks": TASKS,
    }
    options.update(kwargs)
    return run(
        main,
        argv,
        system_config=confs["system"],
        user_config=confs["user"],
        environ={} if environ is None else environ,
        **options,
    )


# -- settings through the command line -----------------------------------------


def test_precedence_through_the_command_line(tmp_path: Path, confs: dict[str, Path]) -> None:
    main = Recorder()

    def timeout(argv: list[str], environ: dict[str, str] | None = None) -> dt.timedelta:
        assert invoke(main, argv, confs, environ) == 0
        assert main.settings is not None
        return main.settings.master.build_timeout

    assert timeout([]) == dt.timedelta(hours=3)
    confs["system"].write_text("[master]\nbuild_timeout = 1m\n")
    assert timeout([]) == dt.timedelta(minutes=1)
    confs["user"].write_text("[master]\nbuild_timeout = 2m\n")
    assert timeout([]) == dt.timedelta(minutes=2)
    extra = tmp_path / "extra.conf"
    extra.write_text("[master]\nbuild_timeout = 3m\n")
    assert timeout(["-c", str(extra)]) == dt.timedelta(minutes=3)
    env = {"PIWHEELS_MASTER_BUILD_TIMEOUT": "4m"}
    assert timeout(["--config", str(extra)], env) == dt.timedelta(minutes=4)
    argv = ["-c", str(extra), "--build-timeout", "5m"]
    assert timeout(argv, env) == dt.timedelta(minutes=5)


def test_options_of_every_kind(confs: dict[str, Path]) -> None:
    main = Recorder()
    argv = [
        "--dsn", "postgresql://u@h/db",
        "--pool-size", "9",
        "--output-path", "/srv/out",
        "--max-file-size", "200M",
        "--dev-mode",
        "--no-curve",
        "--secret-key-file", "/k/secret",
        "--db-role", "farm",
    ]  # fmt: skip
    assert invoke(main, argv, confs) == 0
    settings = main.settings
    assert settings is not None
    assert settings.database.dsn == "postgresql://u@h/db"
    assert settings.database.pool_size == 9
    assert settings.database.role == "farm"
    assert settings.master.output_path == Path("/srv/out")
    assert settings.master.max_file_size == 200 << 20
    assert settings.master.dev_mode is True
    assert settings.keys.curve is False
    assert settings.keys.secret_key_file == Path("/k/secret")
    # Sections the executable does not use keep their defaults (and get no options).
    assert settings.builder == Settings().builder


def test_boolean_option_overrides_file(confs: dict[str, Path]) -> None:
    confs["system"].write_text("[master]\ndev_mode = yes\n")
    main = Recorder()
    assert invoke(main, ["--no-dev-mode"], confs) == 0
    assert main.settings is not None and main.settings.master.dev_mode is False


def test_executable_arguments(confs: dict[str, Path]) -> None:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("package")
        parser.add_argument("-y", "--yes", action="store_true")

    main = Recorder(lambda args, settings: 0 if args.yes else 1)
    assert invoke(main, ["numpy", "-y"], confs, add_arguments=add) == 0
    assert main.args is not None and main.args.package == "numpy"
    assert invoke(main, ["numpy"], confs, add_arguments=add) == 1


def test_prefixed_section_options(confs: dict[str, Path]) -> None:
    main = Recorder()
    sections = ("master", ("builder", "builder-"))
    argv = ["--build-timeout", "1h", "--builder-build-timeout", "2h", "--no-builder-import-test"]
    assert invoke(main, argv, confs, sections=sections) == 0
    assert main.settings is not None
    assert main.settings.master.build_timeout == dt.timedelta(hours=1)
    assert main.settings.builder.build_timeout == dt.timedelta(hours=2)
    assert main.settings.builder.import_test is False


def test_option_clash_detected_at_definition() -> None:
    with pytest.raises(ValueError, match=r"--build-timeout is both \[master\] build_timeout"):
        Command(Recorder(), prog="x", description="x", sections=("master", "builder"))
    with pytest.raises(ValueError, match="no settings section 'nope'"):
        Command(Recorder(), prog="x", description="x", sections=("nope",))

    def clash(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dsn")

    with pytest.raises(argparse.ArgumentError, match="conflicting option string: --dsn"):
        Command(Recorder(), prog="x", description="x", sections=("database",), add_arguments=clash)


def test_setting_may_not_take_a_common_option(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Settings.describe()
    assert not {info.option for info in real} & _COMMON_OPTIONS
    # A key named like a common option (none is today) is refused.
    fake = [real[0]._replace(option="--config")]
    monkeypatch.setattr(Settings, "describe", classmethod(lambda cls: fake))
    with pytest.raises(ValueError, match=r"\[database\] dsn would take common option --config"):
        Command(Recorder(), prog="x", description="x", sections=("database",))


# -- help and version -----------------------------------------------------------


def test_help(confs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    main = Recorder()
    assert invoke(main, ["--help"], confs) == 0
    out = capsys.readouterr().out
    assert main.args is None
    assert out.startswith("usage: piw-test ")
    assert "A test executable." in out
    for text in (
        "--version", "--verbose", "--quiet", "--log-file FILE", "--config FILE", "--debug TASK",
        "page-writer, upstream-watcher", "[master] settings", "--build-timeout DURATION",
        "default: 3h", "PIWHEELS_MASTER_BUILD_TIMEOUT", "--dsn DSN", "--curve, --no-curve",
    ):  # fmt: skip
        assert text in out, text


def test_help_without_tasks_has_no_debug(
    confs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert invoke(Recorder(), ["--help"], confs, tasks=None) == 0
    assert "--debug" not in capsys.readouterr().out
    assert invoke(Recorder(), ["--debug", "x"], confs, tasks=None) == EX_USAGE
    err = capsys.readouterr().err
    assert "piw-test: error: unrecognized arguments: --debug x" in err


def test_version(confs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    main = Recorder()
    assert invoke(main, ["--version"], confs) == 0
    assert capsys.readouterr().out == f"piw-test piwheels {__version__}\n"
    assert main.args is None


def test_usage_error(confs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(Recorder(), ["--pool-size"], confs) == EX_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: piw-test")
    assert err.endswith("piw-test: error: argument --pool-size: expected one argument\n")
    assert invoke(Recorder(), ["-v", "-q"], confs) == EX_USAGE
    assert "not allowed with argument" in capsys.readouterr().err


# -- logging ----------------------------------------------------------------------


def log_everything(args: argparse.Namespace, settings: Settings) -> None:
    for name in ("piwheels.test.other", *TASKS.values()):
        logger = logging.getLogger(name)
        logger.debug("debug from %s", name)
        logger.info("info from %s", name)
        logger.warning("warning from %s", name)
        logger.error("error from %s", name)


@pytest.mark.parametrize(
    "argv, shown",
    [
        ([], {"warning", "error"}),
        (["-v"], {"info", "warning", "error"}),
        (["-vv"], {"debug", "info", "warning", "error"}),
        (["--verbose", "--verbose", "--verbose"], {"debug", "info", "warning", "error"}),
        (["-q"], {"error"}),
        (["-qq"], set()),
    ],
)
def test_verbosity_levels(
    argv: list[str], shown: set[str], confs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert invoke(log_everything, argv, confs) == 0
    err = capsys.readouterr().err
    for level in ("debug", "info", "warning", "error"):
        assert (f"{level} from piwheels.test.other" in err) == (level in shown), level


def test_debug_task(confs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(log_everything, ["--debug", "upstream-*"], confs) == 0
    err = capsys.readouterr().err
    assert "debug from piwheels.test.upstream" in err
    assert "info from piwheels.test.upstream" in err
    assert "debug from piwheels.test.pages" not in err
    assert "info from piwheels.test.pages" not in err
    assert "debug from piwheels.test.other" not in err
    assert "warning from piwheels.test.pages" in err
    # The task's logger is back to its own level afterwards.
    assert logging.getLogger("piwheels.test.upstream").level == logging.NOTSET


def test_debug_every_task(confs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(log_everything, ["--debug", "upstream-watcher", "--debug", "page-*"], confs) == 0
    err = capsys.readouterr().err
    assert "debug from piwheels.test.upstream" in err
    assert "debug from piwheels.test.pages" in err
    assert "debug from piwheels.test.other" not in err


def test_debug_unknown_task(confs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    main = Recorder()
    assert invoke(main, ["--debug", "nosuch*"], confs) == EX_USAGE
    err = capsys.readouterr().err
    assert main.args is None
    assert err.endswith(
        "piw-test: error: --debug nosuch*: no such task (tasks: page-writer, upstream-watcher)\n"
    )


def test_log_file(
    tmp_path: Path, confs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "piw.log"
    assert invoke(log_everything, ["-q", "--log-file", str(log)], confs) == 0
    err = capsys.readouterr().err
    assert "debug from" not in err
    lines = log.read_text().splitlines()
    debug = [line for line in lines if "debug from piwheels.test.other" in line]
    assert len(debug) == 1
    # timestamp, pid, level, logger name, message
    stamp, _time, pid, level, name, *_ = debug[0].split()
    dt.date.fromisoformat(stamp)
    assert pid == str(os.getpid())
    assert level == "DEBUG"
    assert name == "piwheels.test.other:"
    assert sum("from piwheels.test" in line for line in lines) == 12


def test_log_file_gets_the_failure_with_traceback(
    tmp_path: Path, confs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(args: argparse.Namespace, settings: Settings) -> None:
        raise RuntimeError("wheels fell off")

    log = tmp_path / "piw.log"
    assert invoke(fail, ["--log-file", str(log)], confs) == EX_SOFTWARE
    text = log.read_text()
    assert "ERROR piwheels.cli: RuntimeError: wheels fell off" in text
    assert text.count("Traceback (most recent call last)") == 1
    assert "Traceback" not in capsys.readouterr().err


def test_log_file_unwritable(
    tmp_path: Path, confs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "piw.log"
    assert invoke(Recorder(), ["--log-file", str(missing)], confs) == 66
    err = capsys.readouterr().err
    assert err.startswith("piw-test: error: FileNotFoundError: ")
    assert str(missing) in err
    assert len(err.splitlines()) == 1


def test_logging_restored_after_run(confs: dict[str, Path]) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    invoke(log_everything, ["-vv", "--debug", "page-writer"], confs)
    invoke(boom, ["-v", "--log-file", str(confs["user"].parent / "x.log")], confs)
    assert (list(root.handlers), root.level) == before


# -- errors and exit codes -----------------------------------------------------------


def test_config_error_one_line(confs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    main = Recorder()
    assert invoke(main, ["--build-timeout", "forever"], confs) == EX_CONFIG == 78
    err = capsys.readouterr().err
    assert main.args is None
    assert err == (
        "piw-test: error: --build-timeout: 'forever' is not a duration"
        " (e.g. 90, 90s, 5m, 3h, 2d, 1h30m)\n"
    )


def test_config_errors_all_reported(
    confs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    confs["system"].write_text("[master]\nmax_file_size = big\nnope = 1\n")
    confs["user"].write_text("[database]\npool_size = -2\n")
    environ = {"PIWHEELS_KEYS_CURVE": "sometimes"}
    rc = invoke(Recorder(), ["--builder-endpoint", "tcp://x"], confs, environ)
    assert rc == EX_CONFIG
    lines = capsys.readouterr().err.splitlines()
    system, user = confs["system"], confs["user"]
    assert lines[0] == "piw-test: configuration has 5 errors:"
    assert lines[1].startswith(f"piw-test:   {system} [master] max_file_size: 'big' is not a size")
    assert lines[2] == f"piw-test:   {system} [master] nope: unknown setting"
    assert lines[3] == f"piw-test:   {user} [database] pool_size: -2 is too small (at least 1)"
    assert lines[4].startswith("piw-test:   PIWHEELS_KEYS_CURVE: 'sometimes' is not a yes/no")
    assert lines[5].startswith("piw-test:   --builder-endpoint: 'tcp://x' needs a host and a port")
    assert len(lines) == 6
    assert not any("Traceback" in line for line in lines)


def test_config_error_from_main_is_reported(
    confs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def needs_keys(args: argparse.Namespace, settings: Settings) -> None:
        raise ConfigError("[keys] secret_key_file: must be set when curve is on")

    assert invoke(needs_keys, [], confs) == EX_CONFIG
    assert capsys.readouterr().err == (
        "piw-test: error: [keys] secret_key_file: must be set when curve is on\n"
    )


def boom(args: argparse.Namespace, settings: Settings) -> None:
    raise RuntimeError("something unexpected")


def test_unexpected_error_without_traceback(
    confs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert invoke(boom, [], confs) == EX_SOFTWARE
    err = capsys.readouterr().err
    assert err == (
        "piw-test: error: RuntimeError: something unexpected\n"
        "piw-test: run again with -v for the full traceback\n"
    )


@pytest.mark.parametrize("argv", [["-v"], ["--debug", "page-writer"]])
def test_unexpected_error_traceback_when_asked(
    argv: list[str], confs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert invoke(boom, argv, confs) == EX_SOFTWARE
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert 'raise RuntimeError("something unexpected")' in err
    assert err.endswith("piw-test: error: RuntimeError: something unexpected\n")


def test_keyboard_interrupt(confs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: argparse.Namespace, settings: Settings) -> None:
        raise KeyboardInterrupt

    assert invoke(interrupted, [], confs) == 130
    assert invoke(interrupted, ["-v"], confs) == 130
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "body, code",
    [
        (lambda a, s: None, 0),
        (lambda a, s: 0, 0),
        (lambda a, s: 3, 3),
        (lambda a, s: sys.exit(4), 4),
        (lambda a, s: sys.exit(), 0),
    ],
)
def test_main_return_value_is_exit_code(body: Main, code: int, confs: dict[str, Path]) -> None:
    assert invoke(body, [], confs) == code


def test_command_main_exits(confs: dict[str, Path]) -> None:
    command = Command(lambda a, s: 5, prog="piw-test", description="x")
    with pytest.raises(SystemExit) as info:
        command.main(["--version"])
    assert info.value.code == 0


# -- as a real process ---------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import sys
    from piwheels.cli import Command

    def main(args, settings):
        print(settings.master.build_timeout, settings.database.pool_size)

    command = Command(main, prog="piw-sub", description="Subprocess test.",
                      sections=("database", "master"))
    sys.exit(command.run(sys.argv[1:], system_config=None))
    """
)


def run_process(tmp_path: Path, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PIWHEELS_") or key == "PIWHEELS_TEST_DSN"
    }
    environ.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"), **env)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def test_subprocess_config_error_exit_code(tmp_path: Path) -> None:
    user = tmp_path / "xdg" / "piwheels" / "piwheels.conf"
    user.parent.mkdir(parents=True)
    user.write_text("[database]\npool_size = 6\n[master]\nbuild_timeout = 90m\n")

    good = run_process(tmp_path, [], PIWHEELS_DATABASE_POOL_SIZE="8")
    assert (good.returncode, good.stdout, good.stderr) == (0, "1:30:00 8\n", "")

    bad = run_process(tmp_path, ["--pool-size", "0"], PIWHEELS_MASTER_BUILD_TIMEOUT="later")
    assert bad.returncode == 78
    assert bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "piw-sub: configuration has 2 errors:",
        "piw-sub:   PIWHEELS_MASTER_BUILD_TIMEOUT: 'later' is not a duration"
        " (e.g. 90, 90s, 5m, 3h, 2d, 1h30m)",
        "piw-sub:   --pool-size: 0 is too small (at least 1)",
    ]


def test_subprocess_usage_and_version(tmp_path: Path) -> None:
    version = run_process(tmp_path, ["--version"])
    assert (version.returncode, version.stdout) == (0, f"piw-sub piwheels {__version__}\n")
    usage = run_process(tmp_path, ["--no-such-option"])
    assert usage.returncode == EX_USAGE
    assert usage.stderr.splitlines()[-1] == (
        "piw-sub: error: unrecognized arguments: --no-such-option"
    )
