"""Project exceptions and the one handler that turns them into exit codes.

Every executable catches exceptions in :func:`report`, which prints one line
naming what went wrong (a traceback only when asked for) and returns the exit
code.  The codes follow ``sysexits.h`` so scripts can tell kinds apart.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import TextIO

EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78


class PiwheelsError(Exception):
    """Base of every error this project raises on purpose."""

    exit_code = 1


class ConfigError(PiwheelsError, ValueError):
    """The configuration is wrong; carries every problem found, not just the first."""

    exit_code = EX_CONFIG

    def __init__(self, problems: list[str] | str) -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class UsageError(PiwheelsError, ValueError):
    """A command line that does not make sense."""

    exit_code = EX_USAGE


class ProtocolError(PiwheelsError, ValueError):
    """A message that is malformed, unknown, or not allowed on this socket."""

    exit_code = EX_PROTOCOL


class TransportError(PiwheelsError, OSError):
    """A socket could not be used (bad address, closed, too large)."""

    exit_code = EX_IOERR


class TransportTimeout(TransportError, TimeoutError):
    """No reply came within the timeout."""

    exit_code = EX_TEMPFAIL


class DatabaseError(PiwheelsError):
    """The database refused or could not be reached."""

    exit_code = EX_UNAVAILABLE


class SchemaVersionError(DatabaseError):
    """The database schema is not the one this code expects."""

    exit_code = EX_CONFIG


class InvalidWheel(PiwheelsError, ValueError):
    """A wheel (name or archive) failed verification."""

    exit_code = EX_DATAERR


class InvalidName(PiwheelsError, ValueError):
    """A package name or version that cannot be stored."""

    exit_code = EX_DATAERR


class UpstreamError(PiwheelsError, OSError):
    """The upstream index answered with an error, garbage or not at all."""

    exit_code = EX_UNAVAILABLE


class BuildError(PiwheelsError):
    """A build could not be attempted (not the same as a build that failed)."""

    exit_code = EX_SOFTWARE


class AdminError(PiwheelsError):
    """The master refused an admin request; ``code`` says why (e.g. NOPKG)."""

    exit_code = EX_DATAERR

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def exit_code(exc: BaseException) -> int:
    """The process exit code for *exc*."""
    if isinstance(exc, PiwheelsError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, PermissionError):
        return EX_NOPERM
    if isinstance(exc, FileNotFoundError):
        return EX_NOINPUT
    if isinstance(exc, OSError):
        return EX_IOERR
    return EX_SOFTWARE


def one_line(exc: BaseException) -> str:
    """A one-line description of *exc* for a human."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).strip() or exc.__class__.__name__
    text = " ".join(text.split())
    if isinstance(exc, PiwheelsError):
        return text
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return f"{exc.__class__.__name__}: {text}"


def report(
    exc: BaseException, *, prog: str, debug: bool = False, stream: TextIO | None = None
) -> int:
    """Print *exc* for a person and return the exit code to use."""
    stream = sys.stderr if stream is None else stream
    if debug:
        traceback.print_exception(exc, file=stream)
    elif not isinstance(exc, (PiwheelsError, OSError, KeyboardInterrupt)):
        # An unexpected error: keep the traceback in the log file, if any.
        logging.getLogger(prog).debug("unexpected error", exc_info=exc)
    if isinstance(exc, ConfigError) and len(exc.problems) > 1:
        stream.write(f"{prog}: configuration has {len(exc.problems)} errors:\n")
        for problem in exc.problems:
            stream.write(f"{prog}:   {problem}\n")
    else:
        stream.write(f"{prog}: error: {one_line(exc)}\n")
    if not debug and not isinstance(exc, (PiwheelsError, KeyboardInterrupt, OSError)):
        stream.write(f"{prog}: run again with -v for the full traceback\n")
    return exit_code(exc)
