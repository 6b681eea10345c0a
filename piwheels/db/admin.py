"""What the admin tools need from the database beyond the per-aggregate modules.

Restoring removed projects and releases, aliases that keep the display name,
skip look-ups for idempotent answers, the builds and files a removal touches,
purging, and the listings piw-audit compares with the output folder.  Every
write is atomic and keeps the build queue current, like the rest of
:mod:`piwheels.db`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from piwheels.errors import InvalidName

from . import queue
from ._common import atomic, canonical, check_version
from .schema import (
    builds,
    files,
    package_abi_skips,
    package_aliases,
    packages,
    rewrites_pending,
    version_exclusions,
    versions,
)

__all__ = [
    "BuildFiles",
    "PublishedFile",
    "active_builds",
    "add_alias_keep_display",
    "check_alias",
    "file_hashes",
    "finished_builds",
    "last_changes",
    "package_abi_skip",
    "published_files",
    "purge_package",
    "purge_version",
    "restore_package",
    "restore_version",
    "version_abi_skip",
]


def check_alias(package: str, alias: str) -> str:
    """The canonical name of *package* if *alias* is a spelling of it; else InvalidName."""
    canon = canonical(package)
    if canonical(alias) != canon:
        raise InvalidName(
            f"alias {alias!r:.80} is not a spelling of {canon} (it would be a different project)"
        )
    return canon


def add_alias_keep_display(conn: Connection, package: str, alias: str) -> bool:
    """Record *alias* as a spelling of *package* without changing its display name; True if new.

    An operator's alias is usually an old or common misspelling: the display
    name stays the one upstream uses.
    """
    canon = check_alias(package, alias)
    with atomic(conn):
        return bool(
            conn.execute(
                pg_insert(package_aliases)
                .values(alias=alias, package=canon)
                .on_conflict_do_nothing(index_elements=["alias"])
            ).rowcount
        )


def restore_package(conn: Connection, name: str) -> bool:
    """Clear a project's removal mark; True if it was marked removed."""
    canon = canonical(name)
    with atomic(conn):
        done = conn.execute(
            update(packages)
            .where(packages.c.name == canon, packages.c.removed_at.is_not(None))
            .values(removed_at=None)
        ).rowcount
        if done:
            queue.update_package(conn, canon)
    return bool(done)


def restore_version(conn: Connection, package: str, version: str) -> bool:
    """Clear a release's removal mark; True if it was marked removed."""
    canon, version = canonical(package), check_version(version)
    with atomic(conn):
        done = conn.execute(
            update(versions)
            .where(
                versions.c.package == canon,
                versions.c.version == version,
                versions.c.removed_at.is_not(None),
            )
            .values(removed_at=None)
        ).rowcount
        if done:
            queue.update_version(conn, canon, version)
    return bool(done)


def package_abi_skip(conn: Connection, package: str, abi: str) -> str:
    """The reason *package* is skipped on target *abi* ('' when it is not)."""
    reason = conn.execute(
        select(package_abi_skips.c.reason).where(
            package_abi_skips.c.package == canonical(package), package_abi_skips.c.abi == abi
        )
    ).scalar_one_or_none()
    return reason or ""


def version_abi_skip(conn: Connection, package: str, version: str, abi: str) -> str:
    """The reason a release is skipped by hand on target *abi* ('' when it is not)."""
    reason = conn.execute(
        select(version_exclusions.c.reason).where(
            version_exclusions.c.package == canonical(package),
            version_exclusions.c.version == check_version(version),
            version_exclusions.c.abi == abi,
            version_exclusions.c.kind == "skip",
        )
    ).scalar_one_or_none()
    return reason or ""


@dataclass(frozen=True)
class BuildFiles:
    """A build and the file names it published."""

    build_id: int
    version: str
    filenames: tuple[str, ...]


def _builds_where(package: str, version: str | None) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [builds.c.package == canonical(package)]
    if version is not None:
        where.append(builds.c.version == check_version(version))
    return where


def finished_builds(conn: Connection, package: str, version: str | None = None) -> list[BuildFiles]:
    """Finished (successful or failed) builds of a project or release, with their files."""
    rows = conn.execute(
        select(builds.c.build_id, builds.c.version, files.c.filename)
        .select_from(builds.outerjoin(files, files.c.build_id == builds.c.build_id))
        .where(*_builds_where(package, version), builds.c.status.in_(("success", "failed")))
        .order_by(builds.c.build_id, files.c.filename)
    )
    found: dict[int, tuple[str, list[str]]] = {}
    for build_id, ver, filename in rows:
        entry = found.setdefault(build_id, (ver, []))
        if filename is not None:
            entry[1].append(filename)
    return [BuildFiles(b, v, tuple(names)) for b, (v, names) in found.items()]


def active_builds(conn: Connection, package: str, version: str | None = None) -> list[int]:
    """Ids of the builds of a project or release still pending or running."""
    rows = conn.execute(
        select(builds.c.build_id)
        .where(*_builds_where(package, version), builds.c.status.in_(("pending", "building")))
        .order_by(builds.c.build_id)
    )
    return [b for (b,) in rows]


def purge_package(conn: Connection, name: str) -> bool:
    """Delete a project and every row about it (versions, builds, files, aliases).

    True if it existed.

    Download history keeps the name: it is history, not state.
    """
    canon = canonical(name)
    with atomic(conn):
        conn.execute(delete(rewrites_pending).where(rewrites_pending.c.package == canon))
        return bool(conn.execute(delete(packages).where(packages.c.name == canon)).rowcount)


def purge_version(conn: Connection, package: str, version: str) -> bool:
    """Delete a release and its builds and files; True if it existed."""
    canon, version = canonical(package), check_version(version)
    with atomic(conn):
        done = conn.execute(
            delete(versions).where(versions.c.package == canon, versions.c.version == version)
        ).rowcount
    return bool(done)


@dataclass(frozen=True)
class PublishedFile:
    """A file the database says is published, where it must be and what it must hold."""

    package: str
    filename: str
    size: int
    sha256: str
    metadata_sha256: str | None


def published_files(conn: Connection) -> list[PublishedFile]:
    """Every file the database lists, by project then file name."""
    rows = conn.execute(
        select(
            builds.c.package,
            files.c.filename,
            files.c.size,
            files.c.sha256,
            files.c.metadata_sha256,
        )
        .select_from(files.join(builds, builds.c.build_id == files.c.build_id))
        .order_by(builds.c.package, files.c.filename)
    )
    return [PublishedFile(*r) for r in rows]


def last_changes(conn: Connection) -> dict[str, datetime]:
    """Each project's latest recorded change: added, a release added, a build started,
    a file published.

    Yanks, skips and the end of a failed build carry no time of their own, so
    pages are not judged stale by them.
    """
    rows = conn.execute(
        text(
            """
            SELECT p.name, greatest(
                p.added_at,
                (SELECT max(v.added_at) FROM versions v WHERE v.package = p.name),
                (SELECT max(b.started_at) FROM builds b WHERE b.package = p.name),
                (SELECT max(f.published_at) FROM files f JOIN builds b
                 ON b.build_id = f.build_id WHERE b.package = p.name)
            ) AS changed
            FROM packages p
            """
        )
    )
    return {name: changed for name, changed in rows}


def file_hashes(conn: Connection, filenames: list[str]) -> dict[str, str]:
    """The sha256 of each of *filenames* the database lists (others are left out)."""
    if not filenames:
        return {}
    rows = conn.execute(
        select(files.c.filename, files.c.sha256).where(files.c.filename.in_(filenames))
    )
    return {name: sha for name, sha in rows}
