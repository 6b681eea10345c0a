"""``piw-keygen``: make a CurveZMQ key pair for a master, a builder or an admin tool.

Writes ``NAME.key`` (public) and ``NAME.key_secret`` (secret, mode 0600) into
a folder, refusing to replace existing keys, and says where the public key
must be copied.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NoReturn

from .cli import Command
from .errors import UsageError
from .settings import Settings
from .transport import generate_keys

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def keygen(args: argparse.Namespace, settings: Settings) -> int:
    """Generate the key pair; print where each file belongs."""
    name: str = args.name
    if not _NAME.match(name):
        raise UsageError(
            f"key name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    folder: Path = args.dir
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists() or p.is_symlink()]
    if existing:
        raise UsageError(f"refusing to overwrite existing key file(s): {', '.join(existing)}")
    public, secret = generate_keys(folder, name)
    out = sys.stdout
    out.write(f"public key: {public}\nsecret key: {secret} (keep it private)\n")
    if args.role == "master":
        out.write(
            f"On the master set [keys] secret_key_file = {secret}.\n"
            f"Copy {public.name} to every builder and admin host and set their "
            "[keys] server_public_key_file to it.\n"
        )
    else:
        out.write(
            f"On this {args.role} set [keys] secret_key_file = {secret}.\n"
            f"Copy {public.name} into the master's [keys] authorized_keys_dir folder "
            "to admit this " + args.role + ".\n"
        )
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="name of the key pair (e.g. the host name)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("."),
        metavar="FOLDER",
        help="folder to write the key files into [default: the current folder]",
    )
    parser.add_argument(
        "--role",
        choices=("builder", "master", "admin"),
        default="builder",
        help="who will use the key; decides where the public key goes [default: builder]",
    )


COMMAND = Command(
    keygen,
    prog="piw-keygen",
    description="Generate a CurveZMQ key pair for a piwheels master, builder or admin tool.",
    add_arguments=_arguments,
)


def main(argv: list[str] | None = None) -> NoReturn:
    COMMAND.main(argv)
