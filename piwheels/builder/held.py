"""A finished build kept on disk until the master has collected it.

The BUILT payload goes to ``state.json`` and the wheels sit beside it in one
folder of the build directory (one per builder label)::

    <build_dir>/held-<label>/state.json
    <build_dir>/held-<label>/<wheel files>

``state.json`` is written last, through a temporary file and a rename, so it
is the commit point: a folder without it is an interrupted save and is
thrown away.  On start the daemon reloads the folder and offers the build to
the master again (``resume_build_id`` in HELLO, then BUILT).  Every record is
checked on load (the BUILT schema, each wheel's size and sha256): a state
that does not check out is discarded with one clear error, never sent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from voluptuous import Invalid

from .. import protocols
from ..errors import BuildError
from ..filetransfer import sha256_of

__all__ = ["HELD_FORMAT", "HeldStateError", "held_folder", "load_held", "save_held"]

log = logging.getLogger("piwheels.builder")

#: Version of ``state.json``; a file of another version is not loaded.
HELD_FORMAT = 1
STATE_FILE = "state.json"


class HeldStateError(BuildError):
    """The saved state of a held build cannot be used (the message says why)."""


def held_folder(build_dir: Path, label: str) -> Path:
    """Where the builder labelled *label* keeps its held build."""
    # Labels may hold any printable character; keep the folder name plain.
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", label)
    return build_dir / f"held-{safe}"


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..", STATE_FILE) and "/" not in name and "\0" not in name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_held(folder: Path, built: dict[str, Any], files: dict[str, Path]) -> dict[str, Path]:
    """Put *files* in *folder* and write *built* beside them; returns the new paths.

    Raises OSError when the disk refuses (the caller keeps the build in memory).
    """
    discard_held(folder)
    try:
        folder.mkdir(parents=True)
        kept: dict[str, Path] = {}
        for name, path in files.items():
            if not _plain_name(name):
                raise OSError(f"wheel name {name!r} is not a plain file name")
            target = folder / name
            # A hard link (same file system as the build folder) costs nothing and
            # leaves the original in place should the save fail half way.
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
            with open(target, "rb") as fh:
                os.fsync(fh.fileno())
            kept[name] = target
        state = {
            "format": HELD_FORMAT,
            "built": {**built, "duration": built["duration"].total_seconds()},
        }
        tmp = folder / f"{STATE_FILE}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / STATE_FILE)
        _fsync_dir(folder)
    except BaseException:
        discard_held(folder)
        raise
    return kept


def discard_held(folder: Path) -> None:
    """Remove the held build's folder, if any."""
    shutil.rmtree(folder, ignore_errors=True)


def load_held(folder: Path) -> tuple[dict[str, Any], dict[str, Path]] | None:
    """The BUILT payload and wheel paths saved in *folder*; None when nothing is held.

    Raises :class:`HeldStateError` (one line) when the saved state is not usable.
    """
    path = folder / STATE_FILE
    if not folder.is_dir():
        return None
    if not path.is_file():
        # A save that never finished: nothing was ever reported as held.
        log.info("discarding an incomplete held build in %s", folder)
        discard_held(folder)
        return None
    where = f"held build state {path}"
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise HeldStateError(f"{where} is not readable JSON: {_one_line(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != HELD_FORMAT:
        raise HeldStateError(f"{where} is not format {HELD_FORMAT}")
    built = state.get("built")
    if not isinstance(built, dict):
        raise HeldStateError(f"{where} has no 'built' record")
    seconds = built.get("duration")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise HeldStateError(f"{where}: duration {seconds!r} is not a number of seconds")
    schema = protocols.schema_for(protocols.builder, "BUILT", sending=False)
    assert schema is not None
    try:
        built = schema({**built, "duration": timedelta(seconds=seconds)})
    except Invalid as exc:
        raise HeldStateError(f"{where} is not a valid BUILT record: {_one_line(exc)}") from None
    files: dict[str, Path] = {}
    for record in built["files"]:
        name = record["filename"]
        if not _plain_name(name):
            raise HeldStateError(f"{where}: file name {name!r} is not a plain file name")
        wheel = folder / name
        try:
            size, digest = sha256_of(wheel)
        except OSError as exc:
            raise HeldStateError(f"{where}: {name} cannot be read: {_one_line(exc)}") from None
        if (size, digest) != (record["size"], record["sha256"]):
            raise HeldStateError(
                f"{where}: {name} is {size} bytes with sha256 {digest}, "
                f"not the {record['size']} bytes and sha256 recorded"
            )
        files[name] = wheel
    return built, files


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
