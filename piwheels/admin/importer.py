"""``piw-import``: publish wheels built elsewhere, checked exactly like builder files.

Each wheel is checked here first with :func:`piwheels.wheels.verify_wheel`
(the archive, its RECORD, its METADATA, that it is a wheel of the package and
version and serves the build target), so a broken file is refused before
anything is sent.  After a summary and a confirmation, piw-import sends
IMPORT; the master answers SEND for each file, which goes over the file
socket with the same sender builders use, and the master checks every file
again before it publishes them and records the build.
"""

from __future__ import annotations

import argparse
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from ..cli import Command
from ..errors import ConfigError, InvalidWheel, TransportError, UsageError
from ..filetransfer import FileSender, sha256_of
from ..settings import DURATION, Settings
from ..transport import Context, CurveKeys, load_keys
from ..wheels import WheelInfo, canonicalize, parse_wheel_filename, verify_wheel
from .client import AdminClient, add_timeout_option, confirm

__all__ = ["COMMAND", "check_wheels", "file_address", "main"]


def _duration(text: str) -> timedelta:
    try:
        value = DURATION.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert isinstance(value, timedelta)
    return value


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("wheels", nargs="+", type=Path, metavar="WHEEL", help="wheel files")
    parser.add_argument("--package", help="the package [default: from the first wheel]")
    # --version is every tool's own version; this one is the package's.
    parser.add_argument(
        "--package-version",
        dest="pkg_version",
        metavar="VERSION",
        help="the version [default: from the first wheel]",
    )
    parser.add_argument(
        "--abi",
        help="build target, e.g. cp311-linux_armv7l or cp311 [default: from the first wheel]",
    )
    parser.add_argument(
        "--duration", type=_duration, default=timedelta(0), help="how long the build took"
    )
    parser.add_argument("--log", type=Path, metavar="FILE", help="the build log to publish")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add_timeout_option(parser)


def _target(first: Path, abi: str | None) -> tuple[str, str | None]:
    """(abi tag, platform or None) of the target: from --abi or from the first wheel."""
    if abi is not None:
        tag, _, platform = abi.partition("-")
        return tag, platform or None
    fn = parse_wheel_filename(first.name)
    if fn.abi_tag in ("none", "abi3") or "." in fn.abi_tag or "." in fn.platform_tag:
        raise UsageError(
            f"{first.name} does not name one build target; give --abi (e.g. cp311-linux_armv7l)"
        )
    if fn.platform_tag == "any":
        return fn.abi_tag, None
    return fn.abi_tag, fn.platform_tag


def check_wheels(
    paths: list[Path], package: str | None, version: str | None, abi: str | None
) -> tuple[str, str, str, list[WheelInfo]]:
    """Check every wheel as the master will; return (package, version, abi, infos)."""
    for path in paths:
        if not path.is_file():
            raise InvalidWheel(f"{path}: no such file")
    first = parse_wheel_filename(paths[0].name)
    package = package or first.name
    version = version or first.version
    tag, platform = _target(paths[0], abi)
    build: str | tuple[str, str] = tag if platform is None else (tag, platform)
    infos = []
    for path in paths:
        infos.append(verify_wheel(path, package=package, version=version, abi=build))
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise UsageError("the same wheel is given twice")
    return canonicalize(package), version, tag if platform is None else f"{tag}-{platform}", infos


def file_address(endpoint: str) -> str:
    """Where to connect to the master's file socket (a wildcard bind means this host)."""
    return re.sub(r"^tcp://(\*|0\.0\.0\.0|\[::\])", "tcp://127.0.0.1", endpoint)


def _keys(settings: Settings) -> tuple[CurveKeys | None, bytes | None]:
    keys = settings.keys
    if not keys.curve:
        return None, None
    if keys.secret_key_file is None:
        raise ConfigError(
            "[keys] secret_key_file: needed to send files when curve is on (or set curve = false)"
        )
    mine = load_keys(keys.secret_key_file)
    # On the master host the master's own key pair will do for both ends.
    server = keys.server_public_key_file or keys.secret_key_file
    return mine, load_keys(server).public


def _record(info: WheelInfo) -> dict[str, Any]:
    return {
        "filename": info.filename,
        "size": info.size,
        "sha256": info.sha256,
        "requires_python": info.requires_python,
        "requires_dist": list(info.requires_dist),
        "metadata_sha256": info.metadata_sha256,
        "apt_dependencies": [],
        "missing_libraries": [],
        "import_ok": None,
        "import_error": None,
    }


def import_wheels(args: argparse.Namespace, settings: Settings) -> int:
    """The body of piw-import."""
    package, version, abi, infos = check_wheels(
        args.wheels, args.package, args.pkg_version, args.abi
    )
    log = "Imported with piw-import.\n"
    if args.log is not None:
        log = args.log.read_text(encoding="utf-8", errors="replace")
    paths = {info.filename: path for info, path in zip(infos, args.wheels, strict=True)}
    print(f"Import {len(infos)} wheel(s) of {package} {version} for {abi}:")
    for info in infos:
        print(f"  {info.filename} ({info.size} bytes, sha256 {info.sha256[:16]}...)")
    if not confirm("Go ahead?", assume_yes=args.yes):
        print("nothing imported")
        return 1
    keys, server_public = _keys(settings)
    address = file_address(settings.master.file_endpoint)
    context = Context()

    def send(data: dict[str, Any]) -> None:
        path = paths.get(data["filename"])
        if path is None:
            raise TransportError(f"the master asked for {data['filename']}, which is not ours")
        # The file must still be what was checked and announced.
        size, digest = sha256_of(path)
        info = next(i for i in infos if i.filename == data["filename"])
        if (size, digest) != (info.size, info.sha256):
            raise InvalidWheel(f"{path} changed since it was checked")
        result = FileSender(
            context, address, path, data["transfer"], keys=keys, server_public=server_public
        ).run()
        if not result.ok:
            # Carry on: the master's check of the file says what went wrong.
            print(f"sending {path.name} failed: {result.reason}")

    request = {
        "package": package,
        "version": version,
        "abi": abi,
        "duration": args.duration,
        "log": log,
        "files": [_record(i) for i in infos],
    }
    try:
        with AdminClient(
            settings.master.admin_endpoint, timeout=args.timeout, context=context
        ) as client:
            reply = client.request("IMPORT", request, on_send=send)
    finally:
        context.close()
    print(reply["message"])
    return 0


COMMAND = Command(
    import_wheels,
    prog="piw-import",
    description="Publish wheels built elsewhere as a build of one package version and "
    "target. Each wheel is checked here and again by the master.",
    sections=("master", "keys"),
    add_arguments=_arguments,
    epilog="Exit status: 0 imported (or already there), 1 not confirmed, 64 bad command "
    "line, 65 a wheel is broken or the master refused, 69 master not running.",
)


def main(argv: list[str] | None = None) -> NoReturn:
    COMMAND.main(argv)
