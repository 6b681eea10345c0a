"""``piw-add``: add packages and versions; skip, yank, alias, prioritise, retry.

Every change is one request to the master's admin gateway, and every
request is idempotent: running the same command twice changes nothing the
second time (the master says UNCHANGED).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any, NoReturn

from ..cli import Command
from ..errors import UsageError
from ..settings import Settings
from .client import AdminClient, add_timeout_option

__all__ = ["COMMAND", "main", "parse_time"]


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", help="the package (any spelling)")
    parser.add_argument("version", nargs="?", help="a version of it (legacy strings too)")
    parser.add_argument("--summary", help="one-line summary of the package")
    parser.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME",
        help="another spelling of the name (repeatable)",
    )
    parser.add_argument(
        "--released", type=parse_time, metavar="TIME", help="release time of the version"
    )
    parser.add_argument("--requires-python", metavar="SPEC", help="Requires-Python of the version")
    skip = parser.add_mutually_exclusive_group()
    skip.add_argument("--skip", metavar="REASON", help="never build it (with this reason)")
    skip.add_argument("--unskip", action="store_true", help="build it again")
    parser.add_argument(
        "--abi", help="with --skip, --unskip or --retry: only this build target (or ABI tag)"
    )
    yank = parser.add_mutually_exclusive_group()
    yank.add_argument("--yank", metavar="REASON", help="mark the version yanked")
    yank.add_argument("--unyank", action="store_true", help="undo --yank")
    parser.add_argument("--priority", type=int, metavar="N", help="queue priority (higher first)")
    parser.add_argument("--retry", action="store_true", help="let failed builds be tried again")
    add_timeout_option(parser)


def _requests(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The requests the command line asks for, in order; UsageError if it makes no sense."""
    version = args.version
    if version is None:
        for flag, value in (
            ("--released", args.released),
            ("--requires-python", args.requires_python),
            ("--yank", args.yank),
            ("--unyank", args.unyank),
        ):
            if value:
                raise UsageError(f"{flag} needs a VERSION")
    if args.abi is not None and not (args.skip or args.unskip or args.retry):
        raise UsageError("--abi goes with --skip, --unskip or --retry")
    if args.skip is not None and not args.skip.strip():
        raise UsageError("--skip needs a reason")
    pkg = args.package
    out: list[tuple[str, dict[str, Any]]] = []
    add: dict[str, Any] = {"package": pkg}
    if args.summary is not None:
        add["summary"] = args.summary
    if args.alias:
        add["aliases"] = list(args.alias)
    out.append(("ADD_PACKAGE", add))
    if version is not None:
        ver: dict[str, Any] = {"package": pkg, "version": version}
        if args.released is not None:
            ver["released"] = args.released
        if args.requires_python is not None:
            ver["requires_python"] = args.requires_python
        out.append(("ADD_VERSION", ver))
    where = {"package": pkg, "version": version, "abi": args.abi}
    if args.skip is not None:
        out.append(("SKIP", {**where, "reason": args.skip}))
    if args.unskip:
        out.append(("UNSKIP", where))
    if args.yank is not None:
        out.append(("YANK", {"package": pkg, "version": version, "reason": args.yank}))
    if args.unyank:
        out.append(("UNYANK", {"package": pkg, "version": version}))
    if args.priority is not None:
        out.append(("PRIORITY", {"package": pkg, "priority": args.priority}))
    if args.retry:
        out.append(("REBUILD_REQUEST", where))
    return out


def add(args: argparse.Namespace, settings: Settings) -> int:
    """The body of piw-add."""
    requests = _requests(args)
    with AdminClient(settings.master.admin_endpoint, timeout=args.timeout) as client:
        for msg, data in requests:
            reply = client.request(msg, data)
            print(reply["message"])
    return 0


COMMAND = Command(
    add,
    prog="piw-add",
    description="Add a package or version, or change how it is built (skip, yank, "
    "aliases, priority, retries). Runs on the master host.",
    sections=("master",),
    add_arguments=_arguments,
    epilog="Exit status: 0 done (or nothing to change), 64 bad command line, "
    "65 refused by the master, 69 master not running.",
)


def main(argv: list[str] | None = None) -> NoReturn:
    COMMAND.main(argv)
