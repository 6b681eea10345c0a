"""Wheel files and their dependencies."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from piwheels.errors import InvalidWheel

from ._common import atomic
from .schema import DEPENDENCY_TOOLS, IMPORT_TESTS, dependencies, files

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_FILENAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!~-]*\.whl$")
_PY_RE = re.compile(r"^(?:py|cp)(\d)(\d*)$")


@dataclass(frozen=True)
class Dependency:
    """Something a wheel needs at run time."""

    tool: str  # apt, pip or missing-lib
    requirement: str


@dataclass(frozen=True)
class FileRecord:
    """A wheel to record (as the master verified it)."""

    filename: str
    size: int
    sha256: str
    requires_python: str = ""
    metadata_sha256: str | None = None
    import_test: str = "untested"
    import_error: str = ""
    dependencies: tuple[Dependency, ...] = ()


@dataclass(frozen=True)
class FileInfo:
    """A published wheel as stored."""

    filename: str
    build_id: int
    size: int
    sha256: str
    name_tag: str
    version_tag: str
    build_tag: str
    python_tag: str
    abi_tag: str
    platform_tag: str
    requires_python: str
    metadata_sha256: str | None
    published_at: datetime
    import_test: str
    import_error: str
    dependencies: tuple[Dependency, ...] = field(default=())


def serve_range(python_tag: str, abi_tag: str) -> tuple[int, int]:
    """Python versions (major*100+minor, inclusive) a none/abi3 wheel serves.

    ``py3`` serves 3.0-3.99; ``py38`` and ``cp38-abi3`` serve 3.8 onwards;
    ``cp311-none`` serves 3.11 only.  For a specific ABI the range is its own
    version (the ABI tag decides).
    """
    lo, hi = 10_000, -1
    for tag in python_tag.split("."):
        m = _PY_RE.match(tag)
        if not m:
            continue
        major = int(m.group(1))
        minor = int(m.group(2)) if m.group(2) else None
        if minor is None:
            start, end = major * 100, major * 100 + 99
        elif tag.startswith("cp") and abi_tag not in ("abi3",):
            start = end = major * 100 + minor
        else:
            start, end = major * 100 + minor, major * 100 + 99
        lo, hi = min(lo, start), max(hi, end)
    if hi < 0:
        return (0, -1)  # serves nothing we know of
    return lo, hi


def parse_filename(filename: str) -> dict[str, str]:
    """The tags of a wheel file name; InvalidWheel if it is not one."""
    if not isinstance(filename, str) or len(filename) > 255 or not _FILENAME_RE.fullmatch(filename):
        raise InvalidWheel(f"not a safe wheel file name: {filename!r:.80}")
    try:
        parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise InvalidWheel(f"not a valid wheel file name: {filename!r:.80} ({exc})") from exc
    parts = filename[:-4].split("-")
    name, version = parts[0], parts[1]
    build = parts[2] if len(parts) == 6 else ""
    python, abi, platform = parts[-3:]
    return {
        "name_tag": name,
        "version_tag": version,
        "build_tag": build,
        "python_tag": python,
        "abi_tag": abi,
        "platform_tag": platform,
    }


def _check(rec: FileRecord) -> None:
    if not _SHA_RE.fullmatch(rec.sha256):
        raise InvalidWheel(f"{rec.filename}: sha256 is not 64 lower-case hex digits")
    if rec.metadata_sha256 is not None and not _SHA_RE.fullmatch(rec.metadata_sha256):
        raise InvalidWheel(f"{rec.filename}: metadata sha256 is not 64 lower-case hex digits")
    if not isinstance(rec.size, int) or rec.size < 0:
        raise InvalidWheel(f"{rec.filename}: size must be a non-negative integer")
    if rec.import_test not in IMPORT_TESTS:
        raise InvalidWheel(f"{rec.filename}: unknown import test result {rec.import_test!r:.20}")
    for dep in rec.dependencies:
        if dep.tool not in DEPENDENCY_TOOLS:
            raise InvalidWheel(f"{rec.filename}: unknown dependency tool {dep.tool!r:.20}")
        if not dep.requirement or len(dep.requirement) > 1000:
            raise InvalidWheel(f"{rec.filename}: empty or over-long dependency")


def add_files(conn: Connection, build_id: int, records: Iterable[FileRecord]) -> list[str]:
    """Record the files of a build; returns their names.

    A published file name is never given new content: the same name with a
    different hash raises InvalidWheel; the same name and hash is a no-op.
    """
    records = list(records)
    rows = []
    for rec in records:
        tags = parse_filename(rec.filename)
        _check(rec)
        lo, hi = serve_range(tags["python_tag"], tags["abi_tag"])
        rows.append(
            {
                "filename": rec.filename,
                "build_id": build_id,
                "size": rec.size,
                "sha256": rec.sha256,
                **tags,
                "py_min": lo,
                "py_max": hi,
                "requires_python": rec.requires_python or "",
                "metadata_sha256": rec.metadata_sha256,
                "import_test": rec.import_test,
                "import_error": rec.import_error,
            }
        )
    if not rows:
        return []
    with atomic(conn):
        existing = {
            name: sha
            for name, sha in conn.execute(
                select(files.c.filename, files.c.sha256).where(
                    files.c.filename.in_([r["filename"] for r in rows])
                )
            )
        }
        new_rows = []
        for row in rows:
            old = existing.get(str(row["filename"]))
            if old is None:
                new_rows.append(row)
            elif old != row["sha256"]:
                raise InvalidWheel(
                    f"{row['filename']} is already published with another hash; "
                    "a published file is never replaced"
                )
        if new_rows:
            conn.execute(pg_insert(files).on_conflict_do_nothing(), new_rows)
        deps = [
            {"filename": rec.filename, "tool": d.tool, "requirement": d.requirement}
            for rec in records
            for d in rec.dependencies
        ]
        if deps:
            conn.execute(pg_insert(dependencies).on_conflict_do_nothing(), deps)
    return [rec.filename for rec in records]


def _info(m: object, deps: tuple[Dependency, ...] = ()) -> FileInfo:
    r = m._mapping  # type: ignore[attr-defined]
    return FileInfo(
        filename=r["filename"],
        build_id=r["build_id"],
        size=r["size"],
        sha256=r["sha256"],
        name_tag=r["name_tag"],
        version_tag=r["version_tag"],
        build_tag=r["build_tag"],
        python_tag=r["python_tag"],
        abi_tag=r["abi_tag"],
        platform_tag=r["platform_tag"],
        requires_python=r["requires_python"],
        metadata_sha256=r["metadata_sha256"],
        published_at=r["published_at"],
        import_test=r["import_test"],
        import_error=r["import_error"],
        dependencies=deps,
    )


def get_file(conn: Connection, filename: str) -> FileInfo | None:
    row = conn.execute(select(files).where(files.c.filename == filename)).first()
    if row is None:
        return None
    return _info(row, tuple(get_dependencies(conn, filename)))


def get_dependencies(conn: Connection, filename: str) -> list[Dependency]:
    rows = conn.execute(
        select(dependencies.c.tool, dependencies.c.requirement)
        .where(dependencies.c.filename == filename)
        .order_by(dependencies.c.tool, dependencies.c.requirement)
    )
    return [Dependency(tool, req) for tool, req in rows]


def set_import_test(
    conn: Connection,
    filename: str,
    result: str,
    error: str = "",
    missing_libraries: Iterable[str] = (),
) -> None:
    """Record the import test of a wheel (and the shared libraries it could not find)."""
    if result not in IMPORT_TESTS:
        raise InvalidWheel(f"{filename}: unknown import test result {result!r:.20}")
    with atomic(conn):
        done = conn.execute(
            update(files)
            .where(files.c.filename == filename)
            .values(import_test=result, import_error=error)
        ).rowcount
        if not done:
            raise InvalidWheel(f"no such file: {filename!r:.80}")
        conn.execute(
            delete(dependencies).where(
                dependencies.c.filename == filename, dependencies.c.tool == "missing-lib"
            )
        )
        libs = [
            {"filename": filename, "tool": "missing-lib", "requirement": x}
            for x in sorted(set(missing_libraries))
        ]
        if libs:
            conn.execute(pg_insert(dependencies), libs)
