"""Builders and builds: starting, finishing, retrying, deleting."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection

from piwheels.errors import BuildError, InvalidName, InvalidWheel

from . import files as files_mod
from . import queue
from ._common import atomic, canonical, check_version, execute_prepared
from .files import FileRecord
from .schema import (
    FAILURE_CLASSES,
    TRANSIENT_FAILURES,
    abis,
    builders,
    builds,
    files,
)


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


def _atomic(conn: Connection, savepoint: bool) -> AbstractContextManager[Connection]:
    """:func:`atomic`, or nothing when the caller's own transaction is all-or-nothing.

    A savepoint costs two round trips (SAVEPOINT, RELEASE); a caller that rolls
    back its whole transaction on any error does not need one.
    """
    return atomic(conn) if savepoint or not conn.in_transaction() else nullcontext(conn)


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


# The statements below run once per burst of the build dispatcher: each is prepared on
# the server once per connection (_common.execute_prepared), so a burst skips their
# parsing and planning.  Arrays come in as parameters, one per column.

_LOCK_VERSIONS = """
    SELECT v.package, v.version FROM versions v
    JOIN unnest($1::text[], $2::text[]) AS w(package, version)
      ON v.package = w.package AND v.version = w.version
    ORDER BY v.package, v.version
    FOR UPDATE OF v
"""

# After the lock, in one statement (one snapshot, taken once the lock is held): which
# releases are being built, each target's environment version, and past failures.
_START_FACTS = """
    SELECT 'busy' AS kind, b.package, b.version, NULL AS abi, NULL::bigint AS n FROM builds b
    JOIN (SELECT DISTINCT * FROM unnest($1::text[], $2::text[])) AS w(package, version)
      ON b.package = w.package AND b.version = w.version
    WHERE b.status IN ('pending', 'building')
    UNION ALL
    SELECT 'env', NULL, NULL, a.abi, a.env_version FROM abis a
    WHERE a.abi = ANY ($3::text[])
    UNION ALL
    SELECT 'failed', b.package, b.version, b.abi, count(*) FROM builds b
    JOIN unnest($4::text[], $5::text[], $6::text[]) AS w(package, version, abi)
      ON b.package = w.package AND b.version = w.version AND b.abi = w.abi
    WHERE b.status = 'failed' AND NOT b.cleared
    GROUP BY b.package, b.version, b.abi
"""

# One row per new build; each release is at most once in a batch, so the rows returned
# are matched to the input by release (RETURNING's order is not promised).
_INSERT_BUILDS = """
    INSERT INTO builds (package, version, abi, builder_id, status, attempt, env_version)
    SELECT w.package, w.version, w.abi, w.builder_id, 'building', w.attempt, w.env_version
    FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::integer[],
                $6::integer[]) AS w(package, version, abi, builder_id, attempt, env_version)
    RETURNING build_id, package, version
"""


def start_builds(
    conn: Connection,
    wanted: Iterable[tuple[str, str, str, int | None]],
    *,
    savepoint: bool = True,
    update_queue: bool = True,
) -> list[int | None]:
    """Start many builds at once, each (package, version, abi, builder id).

    The same rules as :func:`start_build` in a few statements: a release that
    does not exist, a target that does not exist, a release already being
    built (or asked for twice in *wanted*) is refused.  Returns the new build
    ids in input order, None for each refused one.  With *savepoint* false,
    inside the caller's transaction, no savepoint is made: an error leaves
    that transaction to be rolled back whole.  With *update_queue* false the
    started releases' queue rows are left for the caller to recompute
    (:func:`piwheels.db.queue.update_versions`) in the same transaction, e.g.
    together with other releases in one statement.
    """
    items = [(canonical(p), check_version(v), a, b) for p, v, a, b in wanted]
    if not items:
        return []
    pairs = sorted({(p, v) for p, v, _, _ in items})
    args = {"p": [p for p, _ in pairs], "v": [v for _, v in pairs]}
    with _atomic(conn, savepoint):
        # Lock the releases (in a fixed order) so concurrent starts are serialised.
        exists = {
            (p, v)
            for p, v in execute_prepared(
                conn, "piw_lock_versions", _LOCK_VERSIONS, "text[], text[]", (args["p"], args["v"])
            )
        }
        triples = sorted({(p, v, a) for p, v, a, _ in items})
        busy: set[tuple[str, str]] = set()
        envs: dict[str, int] = {}
        failures: dict[tuple[str, str, str], int] = {}
        facts = execute_prepared(
            conn,
            "piw_start_facts",
            _START_FACTS,
            "text[], text[], text[], text[], text[], text[]",
            (
                args["p"],
                args["v"],
                sorted({a for _, _, a, _ in items}),
                [t[0] for t in triples],
                [t[1] for t in triples],
                [t[2] for t in triples],
            ),
        )
        for kind, package, version, abi, n in facts:
            if kind == "busy":
                busy.add((package, version))
            elif kind == "env":
                envs[abi] = int(n)
            else:
                failures[(package, version, abi)] = int(n)
        rows = []
        chosen: list[int] = []
        for i, (p, v, a, b) in enumerate(items):
            if (p, v) not in exists or (p, v) in busy or a not in envs:
                continue
            busy.add((p, v))  # one build of a release at a time, within the batch too
            chosen.append(i)
            rows.append(
                {
                    "package": p,
                    "version": v,
                    "abi": a,
                    "builder_id": b,
                    "attempt": failures.get((p, v, a), 0) + 1,
                    "env_version": envs[a],
                }
            )
        out: list[int | None] = [None] * len(items)
        if rows:
            new = {
                (p, v): int(build_id)
                for build_id, p, v in execute_prepared(
                    conn,
                    "piw_insert_builds",
                    _INSERT_BUILDS,
                    "text[], text[], text[], integer[], integer[], integer[]",
                    tuple(
                        [r[k] for r in rows]
                        for k in (
                            "package",
                            "version",
                            "abi",
                            "builder_id",
                            "attempt",
                            "env_version",
                        )
                    ),
                )
            }
            for i in chosen:
                out[i] = new[(items[i][0], items[i][1])]
            if update_queue:
                queue.update_versions(conn, {(items[i][0], items[i][1]) for i in chosen})
    return out


@dataclass(frozen=True)
class BuildResult:
    """The outcome of one build, for :func:`finish_builds`."""

    build_id: int
    status: str
    duration: timedelta
    failure_class: str | None = None
    files: tuple[FileRecord, ...] = ()
    log_path: str = ""


_TRANSIENT_SQL = ", ".join(f"'{c}'" for c in TRANSIENT_FAILURES)

# Transient failures get a retry time: the configured base, doubled per attempt.
_FINISH_BUILDS = f"""
    UPDATE builds b
    SET status = u.status,
        duration = u.duration,
        failure_class = u.failure_class,
        retry_after = CASE WHEN u.failure_class IN ({_TRANSIENT_SQL})
                           THEN now() + c.retry_base * power(2, b.attempt - 1) END,
        log_path = u.log_path
    FROM unnest($1::bigint[], $2::text[], $3::interval[], $4::text[], $5::text[])
             AS u(build_id, status, duration, failure_class, log_path),
         configuration c
    WHERE c.id = 1 AND b.build_id = u.build_id AND b.status IN ('pending', 'building')
    RETURNING b.*
"""

# Why some builds could not be finished (only asked after a refusal).
_BUILD_STATES = text(
    """
    SELECT build_id, status FROM builds WHERE build_id = ANY (CAST(:ids AS bigint[]))
    """
)


def _file_rows(build_id: int, records: Iterable[FileRecord]) -> list[dict[str, object]]:
    """The files rows of a build's wheels, each checked (InvalidWheel if not storable)."""
    rows: list[dict[str, object]] = []
    for rec in records:
        tags = files_mod.parse_filename(rec.filename)
        files_mod._check(rec)  # the same checks as files.add_files
        lo, hi = files_mod.serve_range(tags["python_tag"], tags["abi_tag"])
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
    return rows


_FILE_COLUMNS = (
    ("filename", "text"),
    ("build_id", "bigint"),
    ("size", "bigint"),
    ("sha256", "text"),
    ("name_tag", "text"),
    ("version_tag", "text"),
    ("build_tag", "text"),
    ("python_tag", "text"),
    ("abi_tag", "text"),
    ("platform_tag", "text"),
    ("py_min", "integer"),
    ("py_max", "integer"),
    ("requires_python", "text"),
    ("metadata_sha256", "text"),
    ("import_test", "text"),
    ("import_error", "text"),
)

# Every file of a burst in one statement, a column per array parameter.
_INSERT_FILES = f"""
    INSERT INTO files ({", ".join(c for c, _ in _FILE_COLUMNS)})
    SELECT * FROM unnest({", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(_FILE_COLUMNS, 1))})
    ON CONFLICT DO NOTHING
    RETURNING filename
"""
_FILE_TYPES = ", ".join(f"{t}[]" for _, t in _FILE_COLUMNS)

_INSERT_DEPENDENCIES = """
    INSERT INTO dependencies (filename, tool, requirement)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
    ON CONFLICT DO NOTHING
"""


def _add_files_many(
    conn: Connection, rows: list[dict[str, object]], records: list[FileRecord]
) -> None:
    """Insert the checked file *rows* (and their dependencies) of many builds at once.

    Same rule as :func:`piwheels.db.files.add_files`: a published name is never
    given new content (InvalidWheel); the same name and hash again is a no-op.
    """
    if not rows:
        return
    first: dict[str, dict[str, object]] = {}
    for row in rows:
        name = str(row["filename"])
        seen = first.setdefault(name, row)
        if seen["sha256"] != row["sha256"]:
            raise InvalidWheel(
                f"{name} is already published with another hash; a published file is never replaced"
            )
    # The usual case is all new: one INSERT; the names it skipped are checked after.
    new = list(first.values())
    inserted = {
        name
        for (name,) in execute_prepared(
            conn,
            "piw_insert_files",
            _INSERT_FILES,
            _FILE_TYPES,
            tuple([r[c] for r in new] for c, _ in _FILE_COLUMNS),
        )
    }
    others = [name for name in first if name not in inserted]
    if others:
        for name, sha in conn.execute(
            select(files.c.filename, files.c.sha256).where(files.c.filename.in_(others))
        ):
            if sha != first[name]["sha256"]:
                raise InvalidWheel(
                    f"{name} is already published with another hash; "
                    "a published file is never replaced"
                )
    deps = {
        (rec.filename, d.tool, d.requirement): None for rec in records for d in rec.dependencies
    }
    if deps:
        execute_prepared(
            conn,
            "piw_insert_dependencies",
            _INSERT_DEPENDENCIES,
            "text[], text[], text[]",
            tuple(list(column) for column in zip(*deps, strict=True)),
        )


def finish_builds(
    conn: Connection,
    results: Iterable[BuildResult],
    *,
    savepoint: bool = True,
    update_queue: bool = True,
) -> list[Build]:
    """Record the outcomes of many builds (with their files) in a few statements.

    Every result is checked first (status, failure class, file names, hashes,
    dependencies), then the builds are locked, updated in one statement, their
    files inserted, and the queue rows of the releases recomputed in one
    statement.  Any error raises and records nothing (with *savepoint* false,
    inside the caller's transaction, that transaction must be rolled back).
    With *update_queue* false the releases' queue rows are left for the caller
    to recompute in the same transaction.  Returns the finished builds in
    input order.
    """
    results = list(results)
    file_rows: list[dict[str, object]] = []
    records: list[FileRecord] = []
    ids: set[int] = set()
    for res in results:
        if res.build_id in ids:
            raise BuildError(f"build {res.build_id} given twice")
        ids.add(res.build_id)
        if res.status not in ("success", "failed"):
            raise BuildError(f"a build finishes as success or failed, not {res.status!r:.20}")
        if res.status == "failed" and res.failure_class not in FAILURE_CLASSES:
            raise BuildError(f"unknown failure class {res.failure_class!r:.40}")
        if res.status == "success":
            file_rows.extend(_file_rows(res.build_id, res.files))
            records.extend(res.files)
    if not results:
        return []
    id_list = [r.build_id for r in results]
    params = {
        "ids": id_list,
        "status": [r.status for r in results],
        "duration": [r.duration for r in results],
        "failure_class": [r.failure_class if r.status == "failed" else None for r in results],
        "log_path": [r.log_path for r in results],
    }
    with _atomic(conn, savepoint):
        # One statement locks, checks and updates: the UPDATE takes each row's lock
        # and skips a build that is no longer unfinished once it holds it.
        finished = execute_prepared(
            conn,
            "piw_finish_builds",
            _FINISH_BUILDS,
            "bigint[], text[], interval[], text[], text[]",
            tuple(params.values()),
        )
        done = {r.build_id: r for r in (_row(x) for x in finished)}
        if len(done) != len(id_list):
            state = {int(i): str(st) for i, st in conn.execute(_BUILD_STATES, {"ids": id_list})}
            for build_id in id_list:
                if build_id in done:
                    continue
                status = state.get(build_id)
                if status is None:
                    raise BuildError(f"no such build: {build_id}")
                raise BuildError(f"build {build_id} already finished ({status})")
        _add_files_many(conn, file_rows, records)
        if update_queue:
            queue.update_versions(conn, {(b.package, b.version) for b in done.values()})
    return [done[i] for i in id_list]


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
    result = BuildResult(build_id, status, duration, failure_class, tuple(files), log_path)
    return finish_builds(conn, [result])[0]


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
    finish_builds(conn, [BuildResult(b, "failed", timedelta(0), "builder_lost") for b in ids])
    return ids


def unfinished_builds(conn: Connection, builder: int | None = None) -> list[int]:
    """Ids of builds still pending or building (of one builder, or all)."""
    query = select(builds.c.build_id).where(builds.c.status.in_(("pending", "building")))
    if builder is not None:
        query = query.where(builds.c.builder_id == builder)
    return [b for (b,) in conn.execute(query.order_by(builds.c.build_id))]


def abandon_build_ids(conn: Connection, build_ids: Iterable[int]) -> list[int]:
    """Fail the given unfinished builds as builder_lost (they are retried later)."""
    ids = sorted(set(build_ids))
    if not ids:
        return []
    still = [
        b
        for (b,) in conn.execute(
            select(builds.c.build_id).where(
                builds.c.build_id.in_(ids), builds.c.status.in_(("pending", "building"))
            )
        )
    ]
    finish_builds(conn, [BuildResult(b, "failed", timedelta(0), "builder_lost") for b in still])
    return still
