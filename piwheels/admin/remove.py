"""``piw-remove``: remove a package, a version, or only their builds.

Files and pages go too; the master orders the steps so that no page lists a
file that is gone and nothing is left behind (see
:mod:`piwheels.master.admin_gateway`).  Asks for confirmation unless --yes.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from ..cli import Command
from ..settings import Settings
from .client import AdminClient, add_timeout_option, confirm

__all__ = ["COMMAND", "main"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", help="the package")
    parser.add_argument("version", nargs="?", help="only this version")
    parser.add_argument(
        "-b",
        "--builds",
        action="store_true",
        help="remove only the builds and their files (built again unless skipped)",
    )
    parser.add_argument("--reason", default="", help="why (logged by the master)")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_timeout_option(parser)


def remove(args: argparse.Namespace, settings: Settings) -> int:
    """The body of piw-remove."""
    what = args.package if args.version is None else f"{args.package} {args.version}"
    if args.builds:
        question = f"Remove every build of {what} and their files?"
    elif args.version is None:
        question = f"Remove {what}: every version, build, file and page?"
    else:
        question = f"Remove {what}: its builds, files and its place on the pages?"
    if not confirm(question, assume_yes=args.yes):
        print("nothing removed")
        return 1
    data = {
        "package": args.package,
        "version": args.version,
        "builds_only": args.builds,
        "reason": args.reason,
    }
    with AdminClient(settings.master.admin_endpoint, timeout=args.timeout) as client:
        reply = client.request("REMOVE", data)
    print(reply["message"])
    return 0


COMMAND = Command(
    remove,
    prog="piw-remove",
    description="Remove a package, a version, or only their builds, with their files "
    "and pages. Runs on the master host.",
    sections=("master",),
    add_arguments=_arguments,
    epilog="Exit status: 0 removed (or nothing to remove), 1 not confirmed, 64 bad command "
    "line or no terminal to confirm on, 65 refused by the master, 69 master not running.",
)


def main(argv: list[str] | None = None) -> NoReturn:
    COMMAND.main(argv)
