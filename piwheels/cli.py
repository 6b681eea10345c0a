"""The command-line base every executable is built on.

An executable declares a :class:`Command` once, at import time::

    COMMAND = Command(
        serve,                      # serve(args, settings) -> int | None
        prog="piw-master",
        description="Run the master of a piwheels farm.",
        sections=("database", "master", "upstream", "keys"),
        tasks={"upstream-watcher": "piwheels.master.upstream_watcher", ...},
        add_arguments=lambda parser: parser.add_argument("--pause", ...),
    )

    def main(argv: list[str] | None = None) -> NoReturn:
        COMMAND.main(argv)

The parser gets the common options (``--help``, ``--version``, ``-v``,
``-q``, ``--log-file``, ``-c/--config``, and ``--debug TASK`` when the
executable has tasks) and one option per key of the sections it uses.  Running
it loads the settings (see :mod:`piwheels.settings`), sets up logging, calls
the main function, and turns any exception into a one-line message and an
exit code through :func:`piwheels.errors.report`.
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import logging.handlers
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from piwheels import __version__
from piwheels.errors import UsageError, one_line, report
from piwheels.settings import (
    SYSTEM_CONFIG,
    Override,
    SettingInfo,
    Settings,
    load_settings,
    user_config_path,
)

__all__ = ["Command", "LoggingState", "MainFunction", "run", "setup_logging"]

#: The function an executable supplies: gets the parsed arguments and the
#: loaded settings; returns the exit code (None means 0).
MainFunction = Callable[[argparse.Namespace, Settings], "int | None"]

CONSOLE_FORMAT = "{prog}: %(levelname)s: %(message)s"
CONSOLE_VERBOSE_FORMAT = "{prog}: %(levelname)s: %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

# Options every executable has; settings options must not take these names.
_COMMON_OPTIONS = frozenset(
    {"-h", "--help", "--version", "-v", "--verbose", "-q", "--quiet", "--log-file",
     "-c", "--config", "--debug"}
)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of exiting.

    The error then goes through the same handler (and exit code) as every
    other error, and in-process callers get a return value, not SystemExit.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


@dataclass
class LoggingState:
    """What :func:`setup_logging` changed, so it can be put back."""

    console: logging.Handler
    file: logging.Handler | None = None
    _root_level: int = logging.WARNING
    _levels: dict[str, int] = field(default_factory=dict)

    def restore(self) -> None:
        """Remove our handlers and put the logger levels back."""
        root = logging.getLogger()
        for handler in (self.console, self.file):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(self._root_level)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


class _ConsoleFilter(logging.Filter):
    """Pass records at the console level, and every record of debugged loggers."""

    def __init__(self, level: int, debug_loggers: Iterable[str]) -> None:
        super().__init__()
        self.level = level
        self.debug_loggers = tuple(debug_loggers)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.level:
            return True
        name = record.name
        return any(name == n or name.startswith(n + ".") for n in self.debug_loggers)


def verbosity_level(verbose: int, quiet: int) -> int:
    """The console log level for ``-v`` and ``-q`` counts (WARNING by default)."""
    if verbose:
        return logging.INFO if verbose == 1 else logging.DEBUG
    if quiet:
        return logging.ERROR if quiet == 1 else logging.CRITICAL
    return logging.WARNING


def setup_logging(
    *,
    prog: str,
    level: int = logging.WARNING,
    log_file: str | Path | None = None,
    debug_loggers: Iterable[str] = (),
    stream: TextIO | None = None,
) -> LoggingState:
    """Log to *stream* (stderr) at *level*, and to *log_file* at DEBUG.

    Loggers in *debug_loggers* (and their children) log at DEBUG to both.
    Returns the state to :meth:`~LoggingState.restore` afterwards.
    """
    debug_loggers = tuple(debug_loggers)
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr if stream is None else stream)
    console.setLevel(logging.DEBUG)
    console.addFilter(_ConsoleFilter(level, debug_loggers))
    fmt = CONSOLE_VERBOSE_FORMAT if level < logging.WARNING or debug_loggers else CONSOLE_FORMAT
    console.setFormatter(logging.Formatter(fmt.format(prog=prog.replace("%", "%%"))))
    state = LoggingState(console=console, _root_level=root.level)
    if log_file is not None:
        # WatchedFileHandler reopens the file after logrotate moves it.
        handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        state.file = handler
        root.addHandler(handler)
    root.addHandler(console)
    # The root level decides which records are made at all; keep it as high
    # as the handlers allow, so debug calls in hot paths stay cheap.
    root.setLevel(logging.DEBUG if log_file is not None else level)
    for name in debug_loggers:
        logger = logging.getLogger(name)
        state._levels[name] = logger.level
        logger.setLevel(logging.DEBUG)
    return state


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


class Command:
    """One executable: its parser, and how it runs.

    *sections* names the settings sections whose keys become options; an
    entry ``(section, prefix)`` names that section's options
    ``--<prefix><key>`` (for an executable that uses two sections with
    the same key names).  *tasks* maps task names to their logger names (a
    plain sequence means the two are the same); with tasks the executable
    gets ``--debug TASK``.  *add_arguments* adds the executable's own
    arguments to the parser.  Clashing option names raise ValueError here, at
    definition time.
    """

    def __init__(
        self,
        main: MainFunction,
        *,
        prog: str,
        description: str,
        sections: Sequence[str | tuple[str, str]] = (),
        tasks: Mapping[str, str] | Sequence[str] | None = None,
        add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
        epilog: str | None = None,
    ) -> None:
        self.main_function = main
        self.prog = prog
        self.description = description
        if tasks is None:
            self.tasks: dict[str, str] = {}
        elif isinstance(tasks, Mapping):
            self.tasks = dict(tasks)
        else:
            self.tasks = {name: name for name in tasks}
        # option dest -> (section, key, option string)
        self._settings_options: dict[str, tuple[str, str, str]] = {}
        self.parser = self._build_parser(sections, add_arguments, epilog)

    # -- parser ------------------------------------------------------------

    def _build_parser(
        self,
        sections: Sequence[str | tuple[str, str]],
        add_arguments: Callable[[argparse.ArgumentParser], None] | None,
        epilog: str | None,
    ) -> argparse.ArgumentParser:
        parser = _Parser(
            prog=self.prog,
            description=self.description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument(
            "--version", action="version", version=f"{self.prog} piwheels {__version__}"
        )
        loud = parser.add_mutually_exclusive_group()
        loud.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=0,
            help="say more: -v for INFO, -vv for DEBUG; errors show a traceback",
        )
        loud.add_argument("-q", "--quiet", action="count", default=0, help="say less: errors only")
        parser.add_argument(
            "--log-file",
            metavar="FILE",
            type=Path,
            help="also log everything (DEBUG, with timestamps) to FILE",
        )
        parser.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            type=Path,
            action="append",
            default=[],
            help="read settings from FILE too, after the system and user files (repeatable)",
        )
        if self.tasks:
            parser.add_argument(
                "--debug",
                metavar="TASK",
                action="append",
                default=[],
                help="log DEBUG messages of TASK (a pattern; repeatable); tasks: "
                + ", ".join(sorted(self.tasks)),
            )
        self._add_settings_options(parser, sections)
        if add_arguments is not None:
            add_arguments(parser)
        return parser

    def _add_settings_options(
        self, parser: argparse.ArgumentParser, sections: Sequence[str | tuple[str, str]]
    ) -> None:
        infos: dict[str, list[SettingInfo]] = {}
        for info in Settings.describe():
            infos.setdefault(info.section, []).append(info)
        taken: dict[str, str] = {}
        for entry in sections:
            section, prefix = (entry, "") if isinstance(entry, str) else entry
            if section not in infos:
                raise ValueError(f"{self.prog}: no settings section {section!r}")
            group = parser.add_argument_group(
                f"[{section}] settings",
                (Settings.section_classes()[section].__doc__ or "").strip() or None,
            )
            for info in infos[section]:
                option = info.option if not prefix else f"--{prefix}{info.option[2:]}"
                where = f"[{section}] {info.key}"
                if option in _COMMON_OPTIONS:
                    raise ValueError(f"{self.prog}: {where} would take common option {option}")
                if option in taken:
                    raise ValueError(
                        f"{self.prog}: option {option} is both {taken[option]} and {where};"
                        " give one section a prefix"
                    )
                taken[option] = where
                dest = f"setting__{section}__{info.key}"
                self._settings_options[dest] = (section, info.key, option)
                shown = info.default if info.default else "empty"
                text = f"{info.help} [default: {shown}; env {info.env}]".replace("%", "%%")
                if info.type == "boolean":
                    group.add_argument(
                        option, dest=dest, action=argparse.BooleanOptionalAction,
                        default=None, help=text,
                    )  # fmt: skip
                else:
                    group.add_argument(
                        option, dest=dest, metavar=info.metavar, default=None, help=text
                    )

    # -- running -----------------------------------------------------------

    def overrides(self, args: argparse.Namespace) -> list[Override]:
        """The settings given on the command line, as raw values for the loader."""
        result = []
        for dest, (section, key, option) in self._settings_options.items():
            value = getattr(args, dest, None)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
                option = option if value == "true" else f"--no-{option[2:]}"
            result.append(Override(section, key, str(value), option))
        return result

    def debug_loggers(self, patterns: Sequence[str]) -> list[str]:
        """Logger names of the tasks matched by *patterns*; UsageError if one matches none."""
        names: list[str] = []
        for pattern in patterns:
            matched = [task for task in self.tasks if fnmatch.fnmatchcase(task, pattern)]
            if not matched:
                raise UsageError(
                    f"--debug {pattern}: no such task (tasks: {', '.join(sorted(self.tasks))})"
                )
            names.extend(self.tasks[task] for task in matched if self.tasks[task] not in names)
        return names

    def run(
        self,
        argv: Sequence[str] | None = None,
        *,
        system_config: str | Path | None = SYSTEM_CONFIG,
        user_config: str | Path | bool | None = True,
        environ: Mapping[str, str] | None = None,
    ) -> int:
        """Parse *argv*, load settings, run main; return the exit code.

        *system_config* and *user_config* are the files to read (None: not
        read; ``user_config=True``: the real per-user file); *environ*
        defaults to ``os.environ``.  Never raises (SystemExit included).
        """
        verbose = False
        state: LoggingState | None = None
        try:
            try:
                args = self.parser.parse_args(argv)
            except SystemExit as exc:  # --help and --version
                return _exit_code(exc)
            except UsageError:
                sys.stderr.write(self.parser.format_usage())
                raise
            patterns = getattr(args, "debug", [])
            loggers = self.debug_loggers(patterns)
            verbose = args.verbose > 0 or bool(patterns)
            state = setup_logging(
                prog=self.prog,
                level=verbosity_level(args.verbose, args.quiet),
                log_file=args.log_file,
                debug_loggers=loggers,
            )
            if user_config is True:
                user_config = user_config_path(environ)
            settings = load_settings(
                config_files=args.config,
                system_path=system_config,
                user_path=user_config or None,
                environ=environ,
                overrides=self.overrides(args),
            )
            result = self.main_function(args, settings)
            return 0 if result is None else int(result)
        except KeyboardInterrupt:
            # Ctrl-C is the user's own request: no message, the shell's code.
            _log_to_file(state, logging.INFO, "interrupted")
            return 130
        except SystemExit as exc:
            return _exit_code(exc)
        except Exception as exc:
            _log_to_file(state, logging.ERROR, one_line(exc), exc)
            # Our handlers go before report(), which would log the traceback
            # of an unexpected error to the file a second time.
            if state is not None:
                state.restore()
                state = None
            return report(exc, prog=self.prog, debug=verbose)
        finally:
            if state is not None:
                state.restore()

    def main(self, argv: Sequence[str] | None = None) -> NoReturn:
        """Run and exit the process with the exit code (the console-script entry)."""
        sys.exit(self.run(argv))


def _log_to_file(
    state: LoggingState | None, level: int, message: str, exc: BaseException | None = None
) -> None:
    """Record how the run ended in the log file only (the console already has it)."""
    if state is None or state.file is None:
        return
    exc_info: Any = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.getLogger().makeRecord("piwheels.cli", level, "", 0, message, (), exc_info)
    state.file.handle(record)


def run(
    main: MainFunction,
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str,
    sections: Sequence[str | tuple[str, str]] = (),
    tasks: Mapping[str, str] | Sequence[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    system_config: str | Path | None = SYSTEM_CONFIG,
    user_config: str | Path | bool | None = True,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Build a :class:`Command` and run it once; return the exit code."""
    command = Command(
        main,
        prog=prog,
        description=description,
        sections=sections,
        tasks=tasks,
        add_arguments=add_arguments,
    )
    return command.run(argv, system_config=system_config, user_config=user_config, environ=environ)
