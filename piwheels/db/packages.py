"""Projects: adding, aliases, summary, skips, PEP 792 status, priority, removal."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from piwheels.errors import InvalidName

from . import queue
from ._common import atomic, canonical, check_name
from .schema import PROJECT_STATUSES, package_abi_skips, package_aliases, packages


@dataclass(frozen=True)
class Package:
    """A project as stored."""

    name: str
    display_name: str
    summary: str
    skip_reason: str
    status: str
    status_reason: str
    added_at: datetime
    removed_at: datetime | None
    priority: int
    demand: int


def _row(r: object) -> Package:
    m = r._mapping  # type: ignore[attr-defined]
    return Package(
        name=m["name"],
        display_name=m["display_name"],
        summary=m["summary"],
        skip_reason=m["skip_reason"],
        status=m["status"],
        status_reason=m["status_reason"],
        added_at=m["added_at"],
        removed_at=m["removed_at"],
        priority=m["priority"],
        demand=m["demand"],
    )


def add_package(conn: Connection, name: str, summary: str = "") -> bool:
    """Record a project under its canonical name (and *name* as an alias); True if new.

    Adding it again only records the spelling (idempotent).
    """
    canon = canonical(name)
    with atomic(conn):
        new = conn.execute(
            pg_insert(packages)
            .values(name=canon, display_name=name, summary=summary)
            .on_conflict_do_nothing(index_elements=["name"])
        ).rowcount
        add_alias(conn, name)
    return bool(new)


def add_alias(conn: Connection, name: str) -> None:
    """Record a spelling of a project's name as seen now; it becomes the display name."""
    canon = canonical(name)
    with atomic(conn):
        conn.execute(
            pg_insert(package_aliases)
            .values(alias=name, package=canon)
            .on_conflict_do_update(index_elements=["alias"], set_={"last_seen": func.now()})
        )
        conn.execute(update(packages).where(packages.c.name == canon).values(display_name=name))


def get_aliases(conn: Connection, name: str) -> list[str]:
    """Every spelling seen, most recent first."""
    rows = conn.execute(
        select(package_aliases.c.alias)
        .where(package_aliases.c.package == canonical(name))
        .order_by(package_aliases.c.last_seen.desc(), package_aliases.c.alias)
    )
    return [a for (a,) in rows]


def get_package(conn: Connection, name: str) -> Package | None:
    row = conn.execute(select(packages).where(packages.c.name == canonical(name))).first()
    return _row(row) if row is not None else None


def list_packages(conn: Connection, *, live_only: bool = True) -> list[str]:
    query = select(packages.c.name).order_by(packages.c.name)
    if live_only:
        query = query.where(packages.c.removed_at.is_(None))
    return [n for (n,) in conn.execute(query)]


def _set(conn: Connection, name: str, **values: object) -> None:
    canon = canonical(name)
    with atomic(conn):
        done = conn.execute(
            update(packages).where(packages.c.name == canon).values(**values)
        ).rowcount
        if not done:
            raise InvalidName(f"no such project: {canon}")
        queue.update_package(conn, canon)


def set_summary(conn: Connection, name: str, summary: str) -> None:
    canon = canonical(name)
    with atomic(conn):
        conn.execute(update(packages).where(packages.c.name == canon).values(summary=summary))


def skip_package(conn: Connection, name: str, reason: str) -> None:
    """Stop building a project (an empty *reason* builds it again)."""
    _set(conn, name, skip_reason=reason)


def set_status(conn: Connection, name: str, status: str, reason: str = "") -> None:
    """PEP 792 status; a quarantined project is never built."""
    if status not in PROJECT_STATUSES:
        raise InvalidName(f"unknown project status {status!r:.40}")
    _set(conn, name, status=status, status_reason=reason)


def set_priority(conn: Connection, name: str, priority: int) -> None:
    """Bump (or lower) a project in every target's queue."""
    _set(conn, name, priority=priority)


def remove_package(conn: Connection, name: str) -> None:
    """Upstream deleted the project: keep its rows (files to unpublish), stop building."""
    _set(conn, name, removed_at=func.now())


def delete_package(conn: Connection, name: str) -> bool:
    """Forget a project and everything about it; True if it existed."""
    canon = canonical(name)
    with atomic(conn):
        return bool(conn.execute(delete(packages).where(packages.c.name == canon)).rowcount)


def skip_package_abi(conn: Connection, name: str, abi: str, reason: str) -> None:
    """Do not build a project for one target (empty *reason* lifts the skip)."""
    canon = canonical(name)
    from .abis import get_abi

    if reason and get_abi(conn, abi) is None:
        raise InvalidName(f"no such build target: {abi!r:.60}")
    with atomic(conn):
        conn.execute(
            delete(package_abi_skips).where(
                package_abi_skips.c.package == canon, package_abi_skips.c.abi == abi
            )
        )
        if reason:
            conn.execute(package_abi_skips.insert().values(package=canon, abi=abi, reason=reason))
        queue.update_package(conn, canon)


__all__ = [
    "Package",
    "add_alias",
    "add_package",
    "check_name",
    "delete_package",
    "get_aliases",
    "get_package",
    "list_packages",
    "remove_package",
    "set_priority",
    "set_status",
    "set_summary",
    "skip_package",
    "skip_package_abi",
]
