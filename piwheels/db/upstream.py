"""Where the upstream watcher is, per-project serials, and pending page rewrites."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, case, delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from piwheels.errors import InvalidName, UpstreamError

from ._common import atomic, canonical
from .schema import REWRITE_KINDS, packages, rewrites_pending, upstream_state


def get_serial(conn: Connection) -> int:
    """The last upstream serial fully processed."""
    return int(conn.execute(select(upstream_state.c.last_serial)).scalar_one())


def set_serial(conn: Connection, serial: int) -> None:
    """Move the last serial forward; going backwards is refused (it would replay events)."""
    with atomic(conn):
        current = conn.execute(select(upstream_state.c.last_serial).with_for_update()).scalar_one()
        if serial < current:
            raise UpstreamError(f"upstream serial would go backwards: {current} -> {serial}")
        conn.execute(update(upstream_state).values(last_serial=serial, updated_at=func.now()))


def get_project_serial(conn: Connection, package: str) -> int:
    found = conn.execute(
        select(packages.c.upstream_serial).where(packages.c.name == canonical(package))
    ).scalar_one_or_none()
    return int(found or 0)


def set_project_serial(conn: Connection, package: str, serial: int) -> None:
    with atomic(conn):
        if not conn.execute(
            update(packages)
            .where(packages.c.name == canonical(package))
            .values(upstream_serial=func.greatest(packages.c.upstream_serial, serial))
        ).rowcount:
            raise InvalidName(f"no such project: {canonical(package)}")


@dataclass(frozen=True)
class Rewrite:
    """A page rewrite waiting to be done."""

    package: str
    kind: str
    added_at: datetime


def request_rewrite(conn: Connection, package: str, kind: str = "both") -> None:
    """Ask for a project's pages to be written (merged with any pending request)."""
    if kind not in REWRITE_KINDS:
        raise InvalidName(f"unknown rewrite kind {kind!r:.20}")
    with atomic(conn):
        conn.execute(
            pg_insert(rewrites_pending)
            .values(package=canonical(package), kind=kind)
            .on_conflict_do_update(
                index_elements=["package"],
                set_={"kind": _merged(kind)},
            )
        )


def _merged(kind: str) -> ColumnElement[str]:
    # A pending request for the other kind of page means both must be written.
    t = rewrites_pending
    return case((t.c.kind == literal(kind), t.c.kind), else_=literal("both"))


def pending_rewrites(conn: Connection) -> list[Rewrite]:
    rows = conn.execute(select(rewrites_pending).order_by(rewrites_pending.c.added_at))
    return [Rewrite(r.package, r.kind, r.added_at) for r in rows]


def rewrite_done(conn: Connection, package: str) -> None:
    with atomic(conn):
        conn.execute(delete(rewrites_pending).where(rewrites_pending.c.package == package))
