"""Builders and builds: starting, finishing, retrying, deleting."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from piwheels.errors import BuildError, InvalidName

from . import queue
from ._common import atomic, canonical, check_version
from .files import FileRecord, add_files
from .schema import FAILURE_CLASSES, TRANSIENT_FAILURES, abis, builders, builds, files


@dataclass(frozen=True)
class Build:
    """One build attempt."""

    build_id: int
    package: str
    version: str
    abi: str
    builder_id: int | None
    started_at: datetime
    duration: timedelta | None
    status: str
    failure_class: str | None
    attempt: int
    retry_after: datetime | None
    log_path: str


def _row(r: object) -> Build:
    m = r._mapping  # type: ignore[attr-defined]
    return Build(
        build_id=m["build_id"],
        package=m["package"],
        version=m["version"],
        abi=m["abi"],
        builder_id=m["builder_id"],
        started_at=m["started_at"],
        duration=m["duration"],
        status=m["status"],
        failure_class=m["failure_class"],
        attempt=m["attempt"],
        retry_after=m["retry_after"],
        log_path=m["log_path"],
    )


def register_builder(
    conn: Connection,
    label: str,
    *,
    public_key: str = "",
    abi: str | None = None,
    platform_tag: str = "",
) -> int:
    """Record a builder's hello (new or returning); returns its stable id."""
    if not label or len(label) > 200 or not label.isprintable():
        raise InvalidName(f"not a usable builder label: {label!r:.80}")
    with atomic(conn):
        return int(
            conn.execute(
                pg_insert(builders)
                .values(label=label, public_key=public_key, abi=abi, platform_tag=platform_tag)
                .on_conflict_do_update(
                    index_elements=["label"],
                    set_={
                        "public_key": public_key,
                        "abi": abi,
                        "platform_tag": platform_tag,
                        "last_seen": func.now(),
                    },
                )
                .returning(builders.c.builder_id)
            ).scalar_one()
        )


def _builder_id(conn: Connection, builder: int | str | None) -> int | None:
    if builder is None or isinstance(builder, int):
        return builder
    found = conn.execute(
        select(builders.c.builder_id).where(builders.c.label == builder)
    ).scalar_one_or_none()
    return found if found is not None else register_builder(conn, builder)


def start_build(
    conn: Connection, package: str, version: str, abi: str, builder: int | str | None
) -> int:
    """Record that *builder* is building a release for *abi*; returns the build id.

    Two builders racing for the same release: the second gets BuildError.
    """
    canon, version = canonical(package), check_version(version)
    with atomic(conn):
        # Lock the release so concurrent starts of it are serialised.
        locked = conn.execute(
            text("SELECT 1 FROM versions WHERE package = :p AND version = :v FOR UPDATE"),
            {"p": canon, "v": version},
        ).first()
        if locked is None:
            raise BuildError(f"no such version: {canon} {version}")
        env = conn.execute(select(abis.c.env_version).where(abis.c.abi == abi)).scalar_one_or_none()
        if env is None:
            raise BuildError(f"no such build target: {abi!r:.60}")
        busy = conn.execute(
            select(builds.c.build_id).where(
                builds.c.package == canon,
                builds.c.version == version,
                builds.c.status.in_(("pending", "building")),
            )
        ).first()
        if busy is not None:
            raise BuildError(f"{canon} {version} is already being built (build {busy[0]})")
        failures = conn.execute(
            select(func.count()).where(
                builds.c.package == canon,
                builds.c.version == version,
                builds.c.abi == abi,
                builds.c.status == "failed",
                ~builds.c.cleared,
            )
        ).scalar_one()
        build_id = conn.execute(
            builds.insert()
            .values(
                package=canon,
                version=version,
                abi=abi,
                builder_id=_builder_id(conn, builder),
                status="building",
                attempt=failures + 1,
                env_version=env,
            )
            .returning(builds.c.build_id)
        ).scalar_one()
        queue.update_version(conn, canon, version)
    return int(build_id)


def finish_build(
    conn: Connection,
    build_id: int,
    status: str,
    duration: timedelta,
    failure_class: str | None = None,
    files: Iterable[FileRecord] = (),
    log_path: str = "",
) -> Build:
    """Record the outcome of a build (and its files, with their dependencies).

    *status* is ``success`` or ``failed``; a failure needs a *failure_class*.
    Transient failures get a retry time: the configured base, doubled per attempt.
    """
    if status not in ("success", "failed"):
        raise BuildError(f"a build finishes as success or failed, not {status!r:.20}")
    if status == "failed" and failure_class not in FAILURE_CLASSES:
        raise BuildError(f"unknown failure class {failure_class!r:.40}")
    if status == "success":
        failure_class = None
    records = list(files)
    with atomic(conn):
        row = conn.execute(
            select(builds).where(builds.c.build_id == build_id).with_for_update()
        ).first()
        if row is None:
            raise BuildError(f"no such build: {build_id}")
        if row.status not in ("pending", "building"):
            raise BuildError(f"build {build_id} already finished ({row.status})")
        retry_after = None
        if failure_class in TRANSIENT_FAILURES:
            retry_after = conn.execute(
                text(
                    "SELECT now() + retry_base * power(2, :n - 1) FROM configuration WHERE id = 1"
                ),
                {"n": row.attempt},
            ).scalar_one()
        result = conn.execute(
            update(builds)
            .where(builds.c.build_id == build_id)
            .values(
                status=status,
                duration=duration,
                failure_class=failure_class,
                retry_after=retry_after,
                log_path=log_path,
            )
            .returning(*builds.c)
        ).first()
        if status == "success":
            add_files(conn, build_id, records)
        queue.update_version(conn, row.package, row.version)
    assert result is not None
    return _row(result)


def request_retry(conn: Connection, package: str, version: str, abi: str | None = None) -> int:
    """A manual retry: past failures of the release (on *abi*, or all) stop blocking it."""
    canon, version = canonical(package), check_version(version)
    with atomic(conn):
        query = update(builds).where(
            builds.c.package == canon,
            builds.c.version == version,
            builds.c.status == "failed",
            ~builds.c.cleared,
        )
        if abi is not None:
            query = query.where(builds.c.abi == abi)
        count = conn.execute(query.values(cleared=True)).rowcount
        queue.update_version(conn, canon, version)
    return int(count)


def delete_build(conn: Connection, build_id: int) -> list[str]:
    """Delete a build and its files' rows; returns the file names to unpublish."""
    with atomic(conn):
        names = [
            n for (n,) in conn.execute(select(files.c.filename).where(files.c.build_id == build_id))
        ]
        row = conn.execute(
            builds.delete()
            .where(builds.c.build_id == build_id)
            .returning(builds.c.package, builds.c.version)
        ).first()
        if row is None:
            raise BuildError(f"no such build: {build_id}")
        queue.update_version(conn, row.package, row.version)
    return names


def get_build(conn: Connection, build_id: int) -> Build | None:
    row = conn.execute(select(builds).where(builds.c.build_id == build_id)).first()
    return _row(row) if row is not None else None


def get_builds(conn: Connection, package: str, version: str | None = None) -> list[Build]:
    """Builds of a project (or one release), oldest first."""
    query = select(builds).where(builds.c.package == canonical(package))
    if version is not None:
        query = query.where(builds.c.version == version)
    return [_row(r) for r in conn.execute(query.order_by(builds.c.build_id))]


def abandon_builds(conn: Connection, builder: int) -> list[int]:
    """A builder vanished: its unfinished builds fail as builder_lost (retried later)."""
    ids = [
        b
        for (b,) in conn.execute(
            select(builds.c.build_id).where(
                builds.c.builder_id == builder, builds.c.status.in_(("pending", "building"))
            )
        )
    ]
    for build_id in ids:
        finish_build(conn, build_id, "failed", timedelta(0), "builder_lost")
    return ids
