"""``piw-builder``: run a builder daemon against a master (see :mod:`piwheels.builder.daemon`)."""

from __future__ import annotations

import argparse
import signal
from types import FrameType
from typing import NoReturn

from ..cli import Command
from ..settings import Settings
from .daemon import BuilderDaemon


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """Build until SIGTERM/SIGINT (BYE, exit 0), DIE (exit 0) or REFUSED (an error)."""
    daemon = BuilderDaemon(settings)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only set a flag here: the main loop aborts the build and says BYE.
        daemon.stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return daemon.run()


COMMAND = Command(
    serve,
    prog="piw-builder",
    description="Build wheels for a piwheels master: ask for work, build, report, send files.",
    sections=("builder", "keys"),
    tasks={"builder": "piwheels.builder", "transfer": "piwheels.filetransfer"},
)


def main(argv: list[str] | None = None) -> NoReturn:
    COMMAND.main(argv)


if __name__ == "__main__":
    main()
