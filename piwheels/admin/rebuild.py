"""``piw-rebuild``: rewrite pages (home, search, root index, a project, or all).

For ``all`` the master's page writer rewrites every project in the background
(``[master] page_workers`` processes) and reports how many it has written;
piw-rebuild shows that on stderr (a bar on a terminal, a line per tenth
otherwise) and ends when every page is written.  Other pages keep being
written meanwhile.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn, TextIO

from ..cli import Command
from ..errors import UsageError
from ..settings import Settings
from .client import AdminClient, add_timeout_option

__all__ = ["COMMAND", "Progress", "main"]

PARTS = ("home", "search", "root", "project", "all")


class Progress:
    """Shows PROGRESS messages on *stream*: a bar on a terminal, sparse lines otherwise."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self.width = width
        self.shown_tenth = -1
        self.drawn = False

    def __call__(self, data: dict[str, Any]) -> None:
        done, total, message = data["done"], data["total"], data["message"]
        if total <= 0:
            if not self.tty:
                self.stream.write(f"{message}\n")
            return
        if self.tty:
            filled = self.width * done // total
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r[{bar}] {done}/{total} {message}\x1b[K")
            self.drawn = True
        else:
            tenth = 10 * done // total
            if tenth > self.shown_tenth:
                self.shown_tenth = tenth
                self.stream.write(f"{done}/{total} {message}\n")
        self.stream.flush()

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("part", choices=PARTS, help="what to rewrite")
    parser.add_argument("package", nargs="?", help="the package (with 'project')")
    add_timeout_option(parser)


def rebuild(args: argparse.Namespace, settings: Settings) -> int:
    """The body of piw-rebuild."""
    if args.part == "project" and args.package is None:
        raise UsageError("'project' needs a PACKAGE")
    if args.part != "project" and args.package is not None:
        raise UsageError(f"'{args.part}' takes no PACKAGE")
    progress = Progress()
    try:
        with AdminClient(settings.master.admin_endpoint, timeout=args.timeout) as client:
            reply = client.request(
                "REBUILD", {"part": args.part, "package": args.package}, on_progress=progress
            )
    finally:
        progress.end()
    print(reply["message"])
    return 0


COMMAND = Command(
    rebuild,
    prog="piw-rebuild",
    description="Rewrite pages of the site: home, search, root, one project, or all.",
    sections=("master",),
    add_arguments=_arguments,
    epilog="Exit status: 0 done, 64 bad command line, 65 refused by the master, "
    "69 master not running.",
)


def main(argv: list[str] | None = None) -> NoReturn:
    COMMAND.main(argv)
