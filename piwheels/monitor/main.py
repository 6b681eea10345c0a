"""``piw-monitor``: watch and steer the farm from a terminal.

Without options it opens the console (:mod:`piwheels.monitor.app`); with
``--status`` (and ``--json``) it prints the farm's facts once
(:mod:`piwheels.monitor.status`).  The endpoints are the master's
``[master] status_endpoint`` and ``control_endpoint``; tcp endpoints use the
CurveZMQ keys of ``[keys]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import NoReturn

from piwheels.cli import Command
from piwheels.errors import UsageError
from piwheels.settings import Settings

from .client import MonitorClient, client_keys

__all__ = ["COMMAND", "default_silence", "main"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("monitor")
    group.add_argument(
        "--status",
        action="store_true",
        help="print the farm's status once as plain text and exit (no full terminal needed)",
    )
    group.add_argument(
        "--json", action="store_true", help="with --status: print JSON instead (for scripts)"
    )
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the master to answer (default: 5)",
    )
    group.add_argument(
        "--silence",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="count the master lost after this long without a message "
        "(default: twice [master] stats_interval plus 5 seconds)",
    )


def default_silence(settings: Settings) -> timedelta:
    """How long a master may be silent: it publishes STATS every stats_interval."""
    return max(settings.master.stats_interval * 2 + timedelta(seconds=5), timedelta(seconds=10))


@contextmanager
def _quiet_console() -> Iterator[None]:
    # textual draws on the terminal; log lines on stderr would tear the
    # screen, so the console handlers stay quiet while it runs (a log file,
    # if any, still gets everything).
    root = logging.getLogger()
    muted = [
        (h, h.level)
        for h in root.handlers
        if type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.stdout)
    ]
    for handler, _ in muted:
        handler.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for handler, level in muted:
            handler.setLevel(level)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the console, or print the status once."""
    if args.json and not args.status:
        raise UsageError("--json goes with --status")
    status_endpoint = settings.master.status_endpoint
    control_endpoint = settings.master.control_endpoint
    keys = client_keys(settings.keys, (status_endpoint, control_endpoint))
    silence = (
        timedelta(seconds=args.silence) if args.silence is not None else default_silence(settings)
    )
    if args.status:
        from .status import print_status

        print_status(
            control_endpoint,
            keys=keys,
            timeout=args.timeout,
            as_json=args.json,
            silence=silence,
            out=sys.stdout,
        )
        return 0
    from .app import MonitorApp

    client = MonitorClient(
        status_endpoint,
        control_endpoint,
        keys=keys,
        silence_timeout=silence.total_seconds(),
        reconnect_interval=settings.monitor.reconnect_interval.total_seconds(),
        request_timeout=args.timeout,
    )
    app = MonitorApp(
        client,
        output_path=settings.master.output_path,
        base_url=settings.master.base_url,
        silence=silence,
    )
    with client, _quiet_console():
        app.run()
    return 0


COMMAND = Command(
    serve,
    prog="piw-monitor",
    description="Watch and steer a piwheels farm: the master, its builders and recent builds. "
    "Keys in the console: 1/2/3 tabs, p/r pause/resume, s/w/x/k sleep/wake/skip/kill the "
    "selected builder (capitals: all builders), Q stop the master, o sort, / filter, "
    "l log, q quit.",
    sections=("master", "monitor", "keys"),
    add_arguments=_add_arguments,
)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``piw-monitor`` console script."""
    COMMAND.main(argv)
