"""Everything a project page needs, as the web model's dataclasses.

:func:`get_project_data` reads one project; :func:`get_projects_data` and
:func:`get_projects_batch` read a batch of projects in a fixed number of queries (the page
writer's site process and the full rewrite), on a connection in autocommit in one read-only
REPEATABLE READ transaction, so every page of a batch is made from one snapshot.  Both feed
the same assembly, so a project looks the same whichever read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from piwheels.errors import InvalidName
from piwheels.web.gcpause import paused_gc
from piwheels.web.model import AbiStatus, FileData, ProjectData, VersionData, unchecked_maker

from . import abis as abis_mod
from . import downloads, packages, versions
from ._common import canonical
from .queue import SERVES

__all__ = [
    "ProjectLoader",
    "get_project_data",
    "get_projects_batch",
    "get_projects_data",
    "iter_projects_data",
]

#: Days counted as "recent" downloads on the project page.
RECENT_DAYS = 30


# Normalised rows, whichever loader read them (plain tuples: cheap to make and to read).
#: (version, released_at, yanked, yank_reason, prerelease, skip_reason), newest first.
_Ver = tuple[str, Any, bool, str, bool, str]
#: (build_id, status, failure_class, duration) of the latest build of a (version, target);
#: only builds that did not succeed matter (the bulk read leaves the others out).
_Latest = tuple[int, str, Any, Any]
#: (package, version, build_id, filename, size, sha256, published_at, abi_tag, platform_tag,
#: requires_python, metadata_sha256, import_test, import_error, served targets, apt, pip and
#: missing-lib requirements (sorted lists or None)), in file name order: the bulk read's row
#: as it comes (no copy per file); package and served targets are not read from it.
_File = tuple[Any, ...]


@dataclass
class _Rows:
    """The rows one project's page is made from (however they were read)."""

    vers: list[_Ver] = field(default_factory=list)
    latest: dict[tuple[str, str], _Latest] = field(default_factory=dict)
    # version -> target -> the successful build whose file serves it (a pure wheel serves
    # many; when two builds' files serve the same target the newest build wins).
    served: dict[str, dict[str, int]] = field(default_factory=dict)
    queued: set[tuple[str, str]] = field(default_factory=set)
    # (version or None for the whole project, target, kind, reason)
    exclusions: list[tuple[str | None, str, str, str]] = field(default_factory=list)
    files: list[_File] = field(default_factory=list)
    downloads: tuple[int, int] = (0, 0)
    aliases: list[str] = field(default_factory=list)

    def serve(self, version: str, abi: str, build_id: int) -> None:
        """Record that *build_id*'s file serves *abi* for *version* (newest build wins)."""
        by_abi = self.served.setdefault(version, {})
        if by_abi.get(abi, -1) < build_id:
            by_abi[abi] = build_id


def get_project_data(conn: Connection, name: str) -> ProjectData:
    """The whole of a project's page: versions newest first, per-target status, files."""
    canon = canonical(name)
    pkg = packages.get_package(conn, canon)
    if pkg is None:
        raise InvalidName(f"no such project: {canon}")
    targets = [a.abi for a in abis_mod.list_abis(conn) if a.enabled]
    rows = _Rows(
        vers=[
            (v.version, v.released_at, v.yanked, v.yank_reason, v.prerelease, v.skip_reason)
            for v in versions.get_versions(conn, canon)
        ]
    )
    p = {"p": canon}
    rows.latest = {
        (r.version, r.abi): (r.build_id, r.status, r.failure_class, r.duration)
        for r in conn.execute(
            text(
                """
                SELECT DISTINCT ON (version, abi) version, abi, build_id, status,
                       failure_class, duration
                FROM builds WHERE package = :p
                ORDER BY version, abi, build_id DESC
                """
            ),
            p,
        )
    }
    for r in conn.execute(
        text(
            f"""
            SELECT b.version, a.abi, b.build_id
            FROM builds b JOIN files f ON f.build_id = b.build_id CROSS JOIN abis a
            WHERE b.package = :p AND b.status = 'success' AND ({SERVES})
            """
        ),
        p,
    ):
        rows.serve(r.version, r.abi, r.build_id)
    rows.queued = {
        (r.version, r.abi)
        for r in conn.execute(text("SELECT version, abi FROM build_queue WHERE package = :p"), p)
    }
    rows.exclusions = [
        (r.version, r.abi, r.kind, r.reason)
        for r in conn.execute(
            text(
                "SELECT version, abi, kind, reason FROM version_exclusions WHERE package = :p "
                "UNION ALL SELECT NULL, abi, 'skip', reason FROM package_abi_skips "
                "WHERE package = :p"
            ),
            p,
        )
    ]
    # file name -> tool -> requirements (sorted)
    deps: dict[str, dict[str, list[str]]] = {}
    for r in conn.execute(
        text(
            "SELECT d.filename, d.tool, d.requirement FROM dependencies d "
            "JOIN files f ON f.filename = d.filename JOIN builds b ON b.build_id = f.build_id "
            "WHERE b.package = :p ORDER BY d.requirement"
        ),
        p,
    ):
        deps.setdefault(r.filename, {}).setdefault(r.tool, []).append(r.requirement)
    rows.files = [
        (
            canon,
            r.version,
            r.build_id,
            r.filename,
            r.size,
            r.sha256,
            r.published_at,
            r.abi_tag,
            r.platform_tag,
            r.requires_python,
            r.metadata_sha256,
            r.import_test,
            r.import_error,
            None,
            deps.get(r.filename, _NO_DEPS).get("apt"),
            deps.get(r.filename, _NO_DEPS).get("pip"),
            deps.get(r.filename, _NO_DEPS).get("missing-lib"),
        )
        for r in conn.execute(
            text(
                "SELECT b.version, f.* FROM files f JOIN builds b ON b.build_id = f.build_id "
                "WHERE b.package = :p ORDER BY f.filename"
            ),
            p,
        )
    ]
    rows.downloads = downloads.download_counts(conn, canon, RECENT_DAYS)
    rows.aliases = packages.get_aliases(conn, canon)
    return _assemble(pkg.name, pkg, targets, rows)


# The bulk read: a few queries for a whole chunk, each ordered by package so the rows of one
# project come together.  Plain DB-API cursor: rows are tuples, read by position.
_BULK_TARGETS = """
SELECT abi FROM abis WHERE enabled ORDER BY py_major, py_minor, platform_tag
"""
# On a connection in autocommit (the site process's kept one) the batch makes its own
# read-only transaction, opened in the same round trip as the first query: one snapshot for
# every query (REPEATABLE READ), so the pages never mix rows from before and after a write
# committed in between, and one transaction instead of one per query.
_BULK_BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;" + _BULK_TARGETS
# The package row with its downloads and aliases (a few index lookups each per package,
# in the same round trip).
_BULK_PACKAGES = f"""
SELECT p.name, p.display_name, p.summary, p.status, p.status_reason, p.skip_reason,
       p.removed_at IS NULL, d.recent, d.total,
       ARRAY(SELECT a.alias FROM package_aliases a WHERE a.package = p.name
             ORDER BY a.last_seen DESC, a.alias)
FROM packages p
CROSS JOIN LATERAL (
    SELECT coalesce(sum(s.downloads) FILTER (WHERE s.day >= current_date - {RECENT_DAYS}), 0),
           coalesce(sum(s.downloads), 0)
    FROM daily_package_stats s WHERE s.package = p.name
) d (recent, total)
WHERE p.name = ANY(%(n)s)
"""
_BULK_VERSIONS = """
SELECT package, version, released_at, yanked, yank_reason, prerelease, skip_reason
FROM versions WHERE package = ANY(%(n)s)
ORDER BY package, sort_key DESC, version DESC
"""
# What a target's cell needs besides the files, in one query (the first column says which):
# 0, the latest build of a (version, target) when it did not succeed (building, failed; a
# success shows through its file, and leaving the successes out spares decoding most rows);
# 1, a queued (version, target); 2, an exclusion (version NULL for a whole-project skip).
_BULK_STATES = """
SELECT 0, package, version, abi, build_id, status, failure_class, duration FROM (
    SELECT DISTINCT ON (package, version, abi) package, version, abi, build_id, status,
           failure_class, duration
    FROM builds WHERE package = ANY(%(n)s)
    ORDER BY package, version, abi, build_id DESC
) latest WHERE status <> 'success'
UNION ALL
SELECT 1, package, version, abi, NULL, NULL, NULL, NULL FROM build_queue
WHERE package = ANY(%(n)s)
UNION ALL
SELECT 2, package, version, abi, NULL, kind, reason, NULL FROM version_exclusions
WHERE package = ANY(%(n)s)
UNION ALL
SELECT 2, package, NULL, abi, NULL, 'skip', reason, NULL FROM package_abi_skips
WHERE package = ANY(%(n)s)
"""
# Each file with the targets it serves and its dependencies by tool, so no separate reads
# (and no join of the whole files table) are needed.  The targets come from ``abis`` (a
# handful of rows) per file; dependencies from their primary key.
_BULK_FILES = f"""
SELECT b.package, b.version, b.build_id, f.filename, f.size, f.sha256, f.published_at,
       f.abi_tag, f.platform_tag, f.requires_python, f.metadata_sha256, f.import_test,
       f.import_error,
       CASE WHEN b.status = 'success'
            THEN ARRAY(SELECT a.abi FROM abis a WHERE {SERVES}) END,
       d.apt, d.pip, d.lib
FROM builds b JOIN files f ON f.build_id = b.build_id
LEFT JOIN LATERAL (
    SELECT array_agg(requirement ORDER BY requirement) FILTER (WHERE tool = 'apt') AS apt,
           array_agg(requirement ORDER BY requirement) FILTER (WHERE tool = 'pip') AS pip,
           array_agg(requirement ORDER BY requirement) FILTER (WHERE tool = 'missing-lib')
               AS lib
    FROM dependencies WHERE filename = f.filename
) d ON true
WHERE b.package = ANY(%(n)s)
ORDER BY b.package, f.filename
"""


def _fetch(cur: Any, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Run one bulk query on the DB-API cursor *cur*; all its rows."""
    cur.execute(query, params)
    rows: list[tuple[Any, ...]] = cur.fetchall()
    return rows


def get_projects_data(conn: Connection, names: Sequence[str]) -> dict[str, ProjectData]:
    """The pages of every project of *names* that exists, in a fixed number of queries.

    Keys are canonical names, in sorted order; a name with no project (e.g. deleted
    meanwhile) is left out.  Each value equals what :func:`get_project_data` returns for
    that name.  Meant for chunks of up to a few thousand names: every query reads the whole
    chunk with ``= ANY`` through the indexes on the package name (and the files by build id).
    """
    return get_projects_batch(conn, names)[0]


def get_projects_batch(
    conn: Connection, names: Sequence[str]
) -> tuple[dict[str, ProjectData], set[str]]:
    """:func:`get_projects_data` of *names*, and which of them the root index lists.

    A project is listed (as :func:`piwheels.db.figures.published_names` decides) when it is
    not removed, not quarantined and has a file: the rows read for its pages say so, which
    spares the page writer a query per batch.
    """
    # A chunk's rows and model objects form no cycles: garbage collections during the read
    # would only walk them (more than half the read's CPU; see piwheels.web.gcpause).
    with paused_gc():
        return _read_batch(conn, names)


def _read_batch(conn: Connection, names: Sequence[str]) -> tuple[dict[str, ProjectData], set[str]]:
    canons = sorted({canonical(n) for n in names})
    if not canons:
        return {}, set()
    raw = conn.connection.dbapi_connection
    if raw is None:  # pragma: no cover - a live Connection always has one
        raise RuntimeError("connection is closed")
    q = {"n": canons}
    # In autocommit the read makes its own transaction (see _BULK_BEGIN); otherwise the
    # queries run in the caller's.
    own = bool(raw.autocommit)
    read = False
    cur = raw.cursor()
    try:
        targets = [r[0] for r in _fetch(cur, _BULK_BEGIN if own else _BULK_TARGETS, q)]
        pkgs = {r[0]: r for r in _fetch(cur, _BULK_PACKAGES, q)}
        if not pkgs:
            read = True
            return {}, set()
        rows = {name: _Rows() for name in pkgs}
        empty = _Rows()  # sink for rows of a project not (or no longer) in pkgs
        for name, r in pkgs.items():
            got = rows[name]
            got.downloads = (int(r[7]), int(r[8]))
            got.aliases = r[9]

        for r in _fetch(cur, _BULK_VERSIONS, q):
            rows.get(r[0], empty).vers.append(r[1:])  # type: ignore[arg-type]
        for r in _fetch(cur, _BULK_STATES, q):
            kind = r[0]
            if kind == 0:
                rows.get(r[1], empty).latest[(r[2], r[3])] = r[4:]  # type: ignore[assignment]
            elif kind == 1:
                rows.get(r[1], empty).queued.add((r[2], r[3]))
            else:
                rows.get(r[1], empty).exclusions.append((r[2], r[3], r[5], r[6]))
        for r in _fetch(cur, _BULK_FILES, q):
            got = rows.get(r[0], empty)
            got.files.append(r)
            if r[13]:
                version, build_id = r[1], r[2]
                by_abi = got.served.get(version)
                if by_abi is None:
                    by_abi = got.served[version] = {}
                for abi in r[13]:
                    # When two builds' files serve a target the newest build wins.
                    if by_abi.get(abi, -1) < build_id:
                        by_abi[abi] = build_id
        read = True
    finally:
        try:
            if own:
                # Ends the transaction (COMMIT of an aborted one rolls it back), so the
                # kept connection is never left idle in a transaction.
                cur.execute("COMMIT")
        except Exception:
            if read:
                raise
            # else the error that stopped the read is the one to see
        finally:
            cur.close()
    out = {
        name: _assemble(name, _PkgRow(*pkgs[name][1:6]), targets, rows[name])
        for name in canons
        if name in pkgs
    }
    published = {
        name for name, r in pkgs.items() if r[6] and r[3] != "quarantined" and rows[name].files
    }
    return out, published


@dataclass(frozen=True)
class _PkgRow:
    """The package columns a page shows (what :class:`packages.Package` has of them)."""

    display_name: str
    summary: str
    status: str
    status_reason: str
    skip_reason: str


def iter_projects_data(
    conn: Connection, names: Iterable[str], batch: int = 200
) -> Iterator[ProjectData]:
    """Every project of *names* that exists, read :func:`get_projects_data` a *batch* at a time."""
    if batch < 1:
        raise ValueError(f"batch size must be positive: {batch}")
    chunk: list[str] = []
    for name in names:
        chunk.append(name)
        if len(chunk) >= batch:
            yield from get_projects_data(conn, chunk).values()
            chunk = []
    if chunk:
        yield from get_projects_data(conn, chunk).values()


class ProjectLoader:
    """Reads a chunk of projects with :func:`get_projects_data`: ``load_many`` for
    :meth:`piwheels.web.writer.SiteWriter.write_all`.

    Made from a database *url*, it pickles as just the URL and opens an engine of its own
    (one connection) in each process that calls it, so a pool of worker processes each reads
    its own chunks.  Made from an *engine*, it uses that engine and stays in this process.
    """

    def __init__(self, url: str | None = None, *, engine: Engine | None = None) -> None:
        if (url is None) == (engine is None):
            raise ValueError("give a database URL or an engine")
        self.url = url
        self._engine = engine

    def __getstate__(self) -> dict[str, Any]:
        if self.url is None:
            raise TypeError("a ProjectLoader made from an engine cannot leave its process")
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self._engine = None

    def __call__(self, names: list[str]) -> list[ProjectData]:
        if self._engine is None:
            assert self.url is not None
            self._engine = create_engine(self.url, pool_size=1, max_overflow=0)
        with self._engine.connect() as conn:
            # In autocommit the chunk is read in one read-only REPEATABLE READ transaction
            # of its own (see _BULK_BEGIN): one snapshot for all its queries.
            conn.execution_options(isolation_level="AUTOCOMMIT")
            return list(get_projects_data(conn, names).values())


# The loaders' constructors: every value comes from this database, which checked it on the
# way in (see :func:`piwheels.web.model.unchecked_maker`), so the per-row checks are skipped.
_file = unchecked_maker(FileData)
_abi = unchecked_maker(AbiStatus)
_version = unchecked_maker(VersionData)
_PENDING = AbiStatus("pending")
_NOT_BUILT = AbiStatus("skipped", reason="not built")
_NO_DEPS: dict[str, list[str]] = {}
_IMPORT_OK = {"untested": None, "passed": True, "failed": False}


def _assemble(
    name: str, pkg: packages.Package | _PkgRow, targets: list[str], rows: _Rows
) -> ProjectData:
    """A project's page from its rows: each target's status per version, and the files."""
    excluded = {(r[0], r[1]): r[3] for r in rows.exclusions}
    # Requires-Python outranks a pure wheel built elsewhere: installers will not use it.
    py_excluded = {(r[0], r[1]) for r in rows.exclusions if r[2] == "requires_python"}
    served, queued, latest = rows.served, rows.queued, rows.latest
    # (version, build id) -> the targets that build's file serves, in target order.
    serves: dict[tuple[str, int], tuple[str, ...]] = {}
    for version, by_abi in served.items():
        got: dict[int, list[str]] = {}
        for abi in targets:
            build_id = by_abi.get(abi)
            if build_id is not None and (not py_excluded or (version, abi) not in py_excluded):
                got.setdefault(build_id, []).append(abi)
        for build_id, abis in got.items():
            serves[(version, build_id)] = tuple(abis)
    files_by_version: dict[str, list[FileData]] = {}
    for (
        _package,
        version,
        build_id,
        filename,
        size,
        sha256,
        published_at,
        abi_tag,
        platform_tag,
        requires_python,
        metadata_sha256,
        import_test,
        import_error,
        _served,
        apt,
        pip,
        lib,
    ) in rows.files:
        entry = _file(
            filename,
            size,
            sha256,
            published_at,
            abi_tag,
            platform_tag,
            requires_python or None,
            metadata_sha256,
            serves.get((version, build_id), ()),
            _IMPORT_OK.get(import_test, False),
            import_error or None,
            tuple(lib) if lib else (),
            tuple(apt) if apt else (),
            tuple(pip) if pip else (),
        )
        same = files_by_version.get(version)
        if same is None:
            files_by_version[version] = [entry]
        else:
            same.append(entry)
    out = []
    pkg_skip = pkg.skip_reason
    no_builds: dict[str, int] = {}
    for version, released_at, yanked, yank_reason, prerelease, v_skip in rows.vers:
        skip = v_skip or pkg_skip or None
        statuses: dict[str, AbiStatus] = {}
        by_abi = served.get(version, no_builds)
        for abi in targets:
            key = (version, abi)
            b = latest.get(key)
            if excluded and key in py_excluded:
                statuses[abi] = _abi("skipped", None, None, excluded[key], None)
            elif abi in by_abi:
                statuses[abi] = _abi("built", by_abi[abi], None, None, None)
            elif b is not None and b[1] in ("pending", "building"):
                statuses[abi] = _abi("building", b[0], None, None, None)
            elif skip or (excluded and (key in excluded or (None, abi) in excluded)):
                reason = skip or excluded.get(key) or excluded.get((None, abi))
                statuses[abi] = _abi("skipped", None, None, reason, None)
            elif b is not None and b[1] == "failed" and key not in queued:
                statuses[abi] = _abi("failed", b[0], None, b[2], b[3])
            elif key in queued:
                statuses[abi] = _PENDING
            else:
                statuses[abi] = _NOT_BUILT
        same = files_by_version.get(version)
        out.append(
            _version(
                version,
                released_at,
                yanked,
                yank_reason or None,
                prerelease,
                skip,
                statuses,
                tuple(same) if same else (),
            )
        )
    recent, total = rows.downloads
    return ProjectData(
        name=name,
        display_name=pkg.display_name,
        summary=pkg.summary,
        status=pkg.status,  # type: ignore[arg-type]
        status_reason=pkg.status_reason or None,
        aliases=tuple(rows.aliases),
        versions=tuple(out),
        downloads_30d=recent,
        downloads_all=total,
        skip_reason=pkg_skip or None,
        abis=tuple(targets),
    )
