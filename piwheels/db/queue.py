"""The build queue: what each target still needs, in priority order, kept in PostgreSQL.

``build_queue`` is a materialised table.  Every data-layer function that
changes what should be built (a version added, yanked, skipped or removed; a
build started or finished; a skip or status change) recomputes the rows of the
versions it touched with :func:`update_version` / :func:`update_package` — the
same query as the full :func:`refresh`, restricted to those rows, so the rules
live in one place:

* nothing for a skipped package, version or target, a per-project or
  per-version target skip, a yanked or removed release, a removed or
  quarantined project, or a release without a source distribution;
* nothing for a target that Requires-Python excludes, or (unless
  ``configuration.build_when_upstream_wheel``) one upstream already ships a
  wheel for;
* nothing once a successful build's files serve the target (a
  ``py3-none-any`` wheel serves every target, ``cp38-abi3`` serves cp38 and
  newer on its platform);
* nothing while any build of the release is in progress (its wheel may turn
  out pure);
* transient failures (timeout, builder lost, disk full) come back after an
  exponential backoff, up to ``configuration.max_attempts``; other failures
  stay out until the target's builder environment changes
  (:func:`piwheels.db.abis.new_environment`) or someone asks
  (:func:`piwheels.db.builds.request_retry`).

Order: manual priority, then demand (downloads and index hits over the last
``configuration.demand_days`` days, from the daily rollups), then newest
release.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Connection

from piwheels.errors import DatabaseError

from ._common import atomic, execute_prepared
from .schema import TRANSIENT_FAILURES

_TRANSIENT = ", ".join(f"'{c}'" for c in TRANSIENT_FAILURES)

#: How a file f (with its build b) serves target a.
SERVES = """
    (f.platform_tag = 'any' OR a.platform_tag = ANY (string_to_array(f.platform_tag, '.')))
    AND CASE
        WHEN f.abi_tag IN ('none', 'abi3')
            THEN a.py_major * 100 + a.py_minor BETWEEN f.py_min AND f.py_max
        ELSE a.abi_tag = ANY (string_to_array(f.abi_tag, '.'))
    END
"""

#: The rules: every (target, release) that should be queued, with its queue columns.
#: ``{vfilter}`` restricts the releases (over ``v``/``a``), ``{bfilter}`` the builds
#: read for past failures (over ``b``); both are the same condition.
_RULES = f"""
SELECT a.abi, v.package, v.version, p.priority, p.demand,
       coalesce(v.released_at, '-infinity') AS released_at,
       coalesce(fl.retry_after, '-infinity') AS not_before,
       coalesce(fl.failures, 0) + 1 AS attempt
FROM versions v
JOIN packages p ON p.name = v.package
CROSS JOIN abis a
CROSS JOIN (SELECT max_attempts, build_when_upstream_wheel FROM configuration WHERE id = 1) cfg
LEFT JOIN (
    SELECT b.package, b.version, b.abi,
           count(*) AS failures,
           count(*) FILTER (WHERE b.failure_class IN ({_TRANSIENT})) AS transient,
           array_agg(b.env_version) FILTER (
               WHERE b.failure_class NOT IN ({_TRANSIENT})) AS permanent_envs,
           max(b.retry_after) AS retry_after
    FROM builds b
    WHERE b.status = 'failed' AND NOT b.cleared AND {{bfilter}}
    GROUP BY b.package, b.version, b.abi
) fl ON fl.package = v.package AND fl.version = v.version AND fl.abi = a.abi
WHERE {{vfilter}}
  AND a.enabled AND a.skip_reason = ''
  AND p.skip_reason = '' AND p.status <> 'quarantined' AND p.removed_at IS NULL
  AND v.skip_reason = '' AND NOT v.yanked AND v.removed_at IS NULL AND v.has_sdist
  AND (cfg.build_when_upstream_wheel OR NOT v.upstream_wheel_serves)
  AND NOT EXISTS (
      SELECT 1 FROM package_abi_skips s WHERE s.package = v.package AND s.abi = a.abi)
  AND NOT EXISTS (
      SELECT 1 FROM version_exclusions e
      WHERE e.package = v.package AND e.version = v.version AND e.abi = a.abi
        AND (e.kind <> 'upstream_wheel' OR NOT cfg.build_when_upstream_wheel))
  AND NOT EXISTS (
      SELECT 1 FROM builds b
      WHERE b.package = v.package AND b.version = v.version
        AND b.status IN ('pending', 'building'))
  AND NOT EXISTS (
      SELECT 1 FROM builds b JOIN files f ON f.build_id = b.build_id
      WHERE b.package = v.package AND b.version = v.version AND b.status = 'success'
        AND (b.abi = a.abi OR ({SERVES})))
  AND NOT (coalesce(a.env_version <= ANY (fl.permanent_envs), false))
  AND coalesce(fl.transient, 0) < cfg.max_attempts
"""

_COLUMNS = "abi, package, version, priority, demand, released_at, not_before, attempt"
_VALUES = ("priority", "demand", "released_at", "not_before", "attempt")

#: Recompute the rows of a list of releases in one statement: the releases are
#: locked against deletion (what a foreign key check would do), rows that the
#: rules no longer produce are deleted (a set difference, so no pairwise scan),
#: new ones inserted, changed ones updated
#: (unchanged rows are left alone: no dead tuples for nothing).
_UPDATE_MANY = f"""
WITH q_t AS (
    SELECT v.package, v.version
    FROM versions v
    JOIN unnest(CAST(:q_packages AS text[]), CAST(:q_versions AS text[])) AS t(package, version)
      ON v.package = t.package AND v.version = t.version
    ORDER BY v.package, v.version
    FOR KEY SHARE OF v
), q_new AS MATERIALIZED (
    {
    _RULES.format(
        vfilter="(v.package, v.version) IN (SELECT package, version FROM q_t)",
        bfilter="(b.package, b.version) IN (SELECT package, version FROM q_t)",
    )
}
), q_gone AS (
    SELECT q.abi, q.package, q.version
    FROM build_queue q
    JOIN unnest(CAST(:q_packages AS text[]), CAST(:q_versions AS text[])) AS t(package, version)
      ON q.package = t.package AND q.version = t.version
    EXCEPT
    SELECT abi, package, version FROM q_new
), q_del AS (
    DELETE FROM build_queue q USING q_gone g
    WHERE q.abi = g.abi AND q.package = g.package AND q.version = g.version
), q_ins AS (
    INSERT INTO build_queue ({_COLUMNS})
    SELECT {_COLUMNS} FROM q_new
    ON CONFLICT (abi, package, version) DO UPDATE
    SET {", ".join(f"{c} = EXCLUDED.{c}" for c in _VALUES)}
    WHERE ({", ".join(f"build_queue.{c}" for c in _VALUES)})
          IS DISTINCT FROM ({", ".join(f"EXCLUDED.{c}" for c in _VALUES)})
)
SELECT count(*) FROM q_new
"""


def _recompute(conn: Connection, where: str, params: dict[str, object]) -> int:
    """Delete and rebuild the queue rows matching *where* (over columns package/version/abi)."""
    vwhere = where.replace("{t}", "v").replace("{a}", "a")
    bwhere = where.replace("{t}", "b").replace("{a}", "b")
    dwhere = where.replace("{t}.", "").replace("{a}.", "")
    conn.execute(text(f"DELETE FROM build_queue WHERE {dwhere}"), params)
    rules = _RULES.format(vfilter=vwhere, bfilter=bwhere)
    result = conn.execute(text(f"INSERT INTO build_queue ({_COLUMNS}) {rules}"), params)
    return result.rowcount


_UPDATE_MANY_SQL = _UPDATE_MANY.replace(":q_packages", "$1").replace(":q_versions", "$2")


def update_versions(conn: Connection, pairs: Iterable[tuple[str, str]]) -> int:
    """Recompute the queue rows of many releases (canonical names) in one statement.

    Returns how many rows those releases now have in the queue.  Releases
    that do not exist (any more) simply lose their rows.
    """
    keys = sorted(set(pairs))
    if not keys:
        return 0
    args = ([k[0] for k in keys], [k[1] for k in keys])
    result = execute_prepared(conn, "piw_queue_update", _UPDATE_MANY_SQL, "text[], text[]", args)
    return int(result.scalar_one())


def update_version(conn: Connection, package: str, version: str) -> int:
    """Recompute the queue rows of one release (every target); returns rows queued."""
    return update_versions(conn, [(package, version)])


def update_package(conn: Connection, package: str) -> int:
    """Recompute the queue rows of every release of one project."""
    return _recompute(conn, "{t}.package = :q_package", {"q_package": package})


#: Memory for the full computation's hash joins and sorts, and for its index builds
#: (set for the refresh only, then restored).
REFRESH_WORK_MEM = "256MB"
REFRESH_MAINTENANCE_WORK_MEM = "1GB"


def _owns_queue(conn: Connection) -> bool:
    """Whether the current role may change build_queue's indexes (owner or member)."""
    return bool(
        conn.execute(
            text(
                "SELECT pg_has_role(current_user, relowner, 'USAGE') "
                "FROM pg_class WHERE oid = 'build_queue'::regclass"
            )
        ).scalar_one()
    )


def _with_memory(conn: Connection) -> dict[str, str]:
    """Raise work_mem and maintenance_work_mem for this transaction; return the old values."""
    old: dict[str, str] = {}
    for name, value in (
        ("work_mem", REFRESH_WORK_MEM),
        ("maintenance_work_mem", REFRESH_MAINTENANCE_WORK_MEM),
    ):
        old[name] = conn.execute(
            text("SELECT current_setting(:n), set_config(:n, :v, true)"), {"n": name, "v": value}
        ).scalar_one()
    return old


def _restore_memory(conn: Connection, old: dict[str, str]) -> None:
    for name, value in old.items():
        conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})


def _rebuild(conn: Connection) -> int:
    """The whole queue, written into an empty table whose indexes are built afterwards.

    Writing millions of rows through two B-trees costs several times the rows
    themselves; one sort per index after the load is far cheaper.  The table
    is locked ACCESS EXCLUSIVE from the start: the refresh upgrading a weaker
    lock at the end would deadlock with a master transaction that read the
    queue and waits to write it (readers wait instead, for the whole refresh).
    Indexes and constraints are recreated from their own definitions, so this
    follows any later migration of the table.
    """
    conn.execute(text("LOCK TABLE build_queue IN ACCESS EXCLUSIVE MODE"))
    constraints = conn.execute(
        text(
            "SELECT quote_ident(conname), pg_get_constraintdef(oid), conindid FROM pg_constraint "
            "WHERE conrelid = 'build_queue'::regclass AND conindid <> 0"
        )
    ).all()
    backing = {r.conindid for r in constraints}
    indexes = conn.execute(
        text(
            "SELECT indexrelid, indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) "
            "FROM pg_index WHERE indrelid = 'build_queue'::regclass"
        )
    ).all()
    conn.execute(text("TRUNCATE build_queue"))
    for name, _, _ in constraints:
        conn.execute(text(f"ALTER TABLE build_queue DROP CONSTRAINT {name}"))
    for oid, name, _ in indexes:
        if oid not in backing:
            conn.execute(text(f"DROP INDEX {name}"))
    rules = _RULES.format(vfilter="true", bfilter="true")
    count = conn.execute(text(f"INSERT INTO build_queue ({_COLUMNS}) {rules}")).rowcount
    for name, definition, _ in constraints:
        conn.execute(text(f"ALTER TABLE build_queue ADD CONSTRAINT {name} {definition}"))
    for oid, _, definition in indexes:
        if oid not in backing:
            conn.execute(text(definition))
    # Fresh statistics, so next_builds trusts the order index at once.
    conn.execute(text("ANALYZE build_queue"))
    return count


def refresh(conn: Connection, *, abi: str | None = None, rebuild: bool | None = None) -> int:
    """Recompute the whole queue (or one target's); returns rows queued.

    Only needed after bulk loads or target changes: every other change keeps
    the queue current by itself.  The whole queue is rebuilt with its indexes
    dropped and recreated (:func:`_rebuild`) when *rebuild* is true, or by
    default when the current role owns the table (``piw-initdb``'s role, not
    the master's, which may not change indexes): then the queue is locked,
    readers included, until the refresh commits.  Otherwise the rows are
    deleted and inserted through the indexes, which readers do not wait for.
    """
    with atomic(conn):
        old = _with_memory(conn)
        if abi is not None:
            count = _recompute(conn, "{a}.abi = :q_abi", {"q_abi": abi})
        elif rebuild is None and _owns_queue(conn):
            count = _rebuild(conn)
        elif rebuild:
            if not _owns_queue(conn):
                raise DatabaseError(
                    "rebuilding the build queue needs the role that owns build_queue "
                    "(piw-initdb's), not the master's"
                )
            count = _rebuild(conn)
        else:
            count = _recompute(conn, "true", {})
        _restore_memory(conn, old)
        return count


@dataclass(frozen=True)
class QueuedBuild:
    """One entry of a target's build queue."""

    abi: str
    package: str
    version: str
    attempt: int
    priority: int
    demand: int
    released_at: datetime | None


_NEXT_BUILDS = """
    SELECT abi, package, version, attempt, priority, demand,
           CASE WHEN released_at = '-infinity' THEN NULL ELSE released_at END AS released
    FROM build_queue
    WHERE abi = $1 AND not_before <= now()
    ORDER BY priority DESC, demand DESC, released_at DESC, package, version
    LIMIT $2
"""


def next_builds(conn: Connection, abi: str, limit: int = 1) -> list[QueuedBuild]:
    """The next *limit* builds for *abi*, best first (ready now: backoff respected)."""
    rows = execute_prepared(conn, "piw_next_builds", _NEXT_BUILDS, "text, bigint", (abi, limit))
    return [
        QueuedBuild(
            abi=r.abi,
            package=r.package,
            version=r.version,
            attempt=r.attempt,
            priority=r.priority,
            demand=r.demand,
            released_at=r.released,
        )
        for r in rows
    ]


def queue_sizes(conn: Connection) -> dict[str, int]:
    """Entries per target (including ones waiting for a retry)."""
    rows = conn.execute(text("SELECT abi, count(*) FROM build_queue GROUP BY abi"))
    return {abi: int(n) for abi, n in rows}


def refresh_demand(conn: Connection) -> int:
    """Recompute each project's demand from the rollups and copy it into the queue.

    Demand is downloads plus index hits by people's installers: it reads only
    ``daily_package_stats``, which never counts bots (see
    :func:`piwheels.db.stats.rollup_day`), so a crawler fetching every wheel
    cannot reorder the queue.  Only projects whose demand changed are
    written.  Returns how many changed.
    """
    with atomic(conn):
        changed = conn.execute(
            text(
                """
                WITH d AS (
                    SELECT s.package AS name, sum(s.downloads + s.searches) AS total
                    FROM daily_package_stats s, configuration c
                    WHERE c.id = 1 AND s.day >= current_date - c.demand_days
                    GROUP BY s.package
                ), x AS (
                    SELECT name, total FROM d
                    UNION ALL
                    SELECT name, 0 FROM packages
                    WHERE demand <> 0 AND name NOT IN (SELECT name FROM d)
                )
                UPDATE packages p SET demand = x.total
                FROM x WHERE p.name = x.name AND p.demand <> x.total
                """
            )
        ).rowcount
        conn.execute(
            text(
                """
                UPDATE build_queue q SET demand = p.demand
                FROM packages p WHERE p.name = q.package AND q.demand <> p.demand
                """
            )
        )
    return changed
